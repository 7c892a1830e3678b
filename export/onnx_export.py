"""Export: the few-step sampler unrolled into one ONNX graph, checked against PyTorch with ONNX Runtime."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor

from avatar.audio import VIDEO_FPS, MelSpec
from export.spec import SPEC_VERSION, TensorSpec, TwinSpec, sidecar_path
from model.checkpoint import RENDERER_ROLES, available_roles, load_checkpoint, resolve_checkpoint
from model.networks import TwinDenoiser
from model.render_inputs import INPUT_NAMES, OUTPUT_NAMES, RenderInputs
from model.renderer import TwinRenderer, build_renderer
from twincast.errors import ArtifactMismatchError, InputError, NotFoundError
from twincast.files import atomic_path, sha256_file

TOLERANCE = {"fp32": 2e-3, "fp16": 5e-2}  # max |ONNX Runtime − PyTorch fp32| on images in [-1, 1]
WEIGHTS_FILE_SUFFIX = ".pt"


@dataclass(frozen=True)
class ExportResult:
    """Paths written by an export and the parity measured."""

    onnx: Path
    sidecar: Path
    weights: Path
    max_abs_error: float


def example_inputs(denoiser: TwinDenoiser, batch: int, seed: int = 0) -> dict[str, Tensor]:
    """Plausible random inputs for tracing and parity checks."""
    config = denoiser.config
    generator = torch.Generator().manual_seed(seed)
    image = (torch.rand(batch, 3, config.crop_px, config.crop_px, generator=generator) * 2 - 1)
    return RenderInputs(
        masked_crop=image,
        reference=image.flip(0),
        mel=torch.randn(batch, config.mel_bins, config.mel_frames, generator=generator) * 0.5 - 0.5,
        noise=torch.randn(denoiser.noise_shape(batch), generator=generator),
    )._asdict()


def choose_variant(run: Path, variant: str = "auto") -> str:
    """The checkpoint role to export: ``auto`` takes the few-step student when the run has one."""
    if variant != "auto":
        return variant
    return "student" if run.is_dir() and "student" in available_roles(run) else "teacher"


def export_run(run: Path, out: Path, *, steps: int | None = None, opset: int = 17,
               variant: str = "auto", precision: str = "fp32") -> ExportResult:
    """Export the run at ``run`` to ``out`` (``twin.onnx``), with ``twin.json`` and the weights beside it.

    The graph has a dynamic batch axis (TensorRT builds optimisation profiles over it) and float32 inputs and
    output at both precisions; ``fp16`` computes in half precision inside.

    Raises:
        NotFoundError, InputError: no usable checkpoint at ``run``; ``out`` is not an .onnx path.
        ArtifactMismatchError: ONNX Runtime disagrees with PyTorch fp32 beyond the precision's tolerance.
    """
    if precision not in TOLERANCE:
        raise InputError(f"--precision {precision!r} must be one of {sorted(TOLERANCE)}")
    if out.suffix != ".onnx":
        raise InputError(f"--out {out} must end in .onnx")
    if opset < 17:
        raise InputError(f"opset {opset} is too old; twincast exports opset ≥ 17")
    if variant not in ("auto", *RENDERER_ROLES):
        raise InputError(f"--variant {variant!r} must be auto or one of {sorted(RENDERER_ROLES)}")
    role = choose_variant(run, variant)
    checkpoint = load_checkpoint(run, role)
    config = checkpoint.model
    steps = steps or config.sample_steps
    if not 1 <= steps <= 50:
        raise InputError(f"--steps {steps} must be in 1..50")
    if "mel" not in checkpoint.pack:
        raise InputError(f"{run} was trained before checkpoints recorded their audio features; retrain it")
    denoiser = checkpoint.build()
    reference = TwinRenderer(denoiser, steps).eval()
    # fp16 casts its own copy of the network to half; fp32 exports the reference itself
    renderer = reference if precision == "fp32" else build_renderer(checkpoint.build(), steps, precision)
    inputs = example_inputs(denoiser, batch=2)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                renderer, tuple(inputs[name] for name in INPUT_NAMES), str(tmp), input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=False,
                dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)},
            )
        onnx.checker.check_model(str(tmp), full_check=True)  # full_check: strict, type-checked shape inference
        max_error = check_parity(reference, tmp)
        if max_error > TOLERANCE[precision]:
            raise ArtifactMismatchError(
                f"ONNX Runtime ({precision}) differs from PyTorch fp32 by {max_error:.2e} "
                f"(tolerance {TOLERANCE[precision]:.0e})"
            )
    weights = out.with_suffix(WEIGHTS_FILE_SUFFIX)
    with atomic_path(weights) as tmp_weights:
        shutil.copyfile(resolve_checkpoint(run, role), tmp_weights)
    image_shape: tuple[int | str, ...] = ("batch", 3, config.crop_px, config.crop_px)
    noise_shape: tuple[int | str, ...] = ("batch", *denoiser.noise_shape(1)[1:])
    spec = TwinSpec(
        spec_version=SPEC_VERSION,
        inputs=tuple(TensorSpec(name, shape, "float32") for name, shape in RenderInputs(
            masked_crop=image_shape, reference=image_shape, mel=("batch", config.mel_bins, config.mel_frames),
            noise=noise_shape)._asdict().items()),
        outputs=tuple(TensorSpec(name, image_shape, "float32") for name in OUTPUT_NAMES),
        steps=steps, crop_px=config.crop_px, mask_top=config.mask_top, fps=VIDEO_FPS, precision=precision,
        opset=opset, onnx_file=out.name, onnx_sha256=sha256_file(out), weights_file=weights.name,
        weights_sha256=sha256_file(weights), model=asdict(config), mel=asdict(MelSpec(**checkpoint.pack["mel"])),
        parity={"engine": "onnxruntime-cpu", "reference": "torch-fp32", "max_abs_error": max_error,
                "tolerance": TOLERANCE[precision]},
        source={"run": str(run), "variant": role, "step": checkpoint.step, "pack": checkpoint.pack},
    )
    sidecar = sidecar_path(out)
    spec.save(sidecar)
    return ExportResult(onnx=out, sidecar=sidecar, weights=weights, max_abs_error=max_error)


def check_parity(renderer: TwinRenderer, onnx_path: Path) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch on a batch of 3 random inputs."""
    import onnxruntime as ort

    inputs = example_inputs(renderer.denoiser, batch=3, seed=1)
    with torch.inference_mode():
        expected = renderer(*(inputs[name] for name in INPUT_NAMES)).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
    return float(np.max(np.abs(actual - expected)))


def artifact_for(model: Path, cache: Path) -> Path:
    """An artifact path for ``model``: ``twin.onnx`` as given, or a run exported once into ``cache``.

    A run directory (holding checkpoints but no ``twin.onnx``) has its default variant (the student when
    there is one) exported to ``cache/model-<checkpoint hash>/twin.onnx`` the first time and reused afterwards.
    """
    if model.is_file() or (model / "twin.onnx").is_file():
        return model / "twin.onnx" if model.is_dir() else model
    if not model.is_dir():
        raise NotFoundError(f"no model artifact at {model}; expected twin.onnx from `twincast export`, or a run "
                            "directory from `twincast train`")
    checkpoint = resolve_checkpoint(model, choose_variant(model))
    onnx_path = cache / f"model-{sha256_file(checkpoint)[:12]}" / "twin.onnx"
    if not (onnx_path.is_file() and sidecar_path(onnx_path).is_file()):
        export_run(model, onnx_path)
    return onnx_path
