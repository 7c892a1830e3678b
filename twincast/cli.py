"""The ``twincast`` command: one thin subcommand per job, over the stage packages.

Configuration is layered here and only here: defaults → ``--config`` TOML → ``TWINCAST_*`` environment →
flags. Every error a user can cause is printed as one line naming the problem, with a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twincast import __version__
from twincast.config import build_config, load_toml
from twincast.errors import TwincastError

log = logging.getLogger("twincast")

EXIT_USER_ERROR = 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", type=Path,
                        help="TOML file with [synth], [enroll], [train], [distill], [serve] tables")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


Handler = Callable[[argparse.Namespace, dict[str, Any]], int]


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, the function that adds its flags, and the handler that runs it."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Handler


COMMANDS: dict[str, Command] = {}  # filled by @command, in the order the help lists them


def command(name: str, help_text: str,
            arguments: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register the decorated handler as subcommand ``name``, with the flags ``arguments`` adds."""
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(help_text, arguments, handler)
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every registered subcommand."""
    parser = argparse.ArgumentParser(prog="twincast", description="Live digital twins from a few minutes of footage.")
    parser.add_argument("--version", action="version", version=f"twincast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, registered in COMMANDS.items():
        sub = commands.add_parser(name, help=registered.help)
        registered.arguments(sub)
        _add_common(sub)
    return parser


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--portrait", type=Path, help="still portrait (default: the committed public-domain one)")
    parser.add_argument("--text", help="what the person says (default: a short product pitch)")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4 (a .json truth sidecar goes beside it)")
    parser.add_argument("--size", type=int, dest="size_px", help="output width and height in pixels")
    parser.add_argument("--seed", type=int)


@command("synth-footage", "synthetic talking-head footage from a portrait + speech", _synth_arguments)
def cmd_synth(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from avatar.synth import DEFAULT_PORTRAIT, DEFAULT_TEXT, SynthConfig, synth_footage

    config = build_config(SynthConfig, section="synth", toml=toml, env=os.environ,
                          overrides={"size_px": args.size_px, "seed": args.seed})
    text = DEFAULT_TEXT if args.text is None else args.text
    result = synth_footage(args.portrait or DEFAULT_PORTRAIT, text, args.out, config, progress=_progress(args))
    print(json.dumps({"video": str(result.video), "sidecar": str(result.sidecar), "frames": result.frame_count,
                      "duration_s": result.duration_s}))
    return 0


def _enroll_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="avatar pack directory to create")
    parser.add_argument("--crop-px", type=int, help="aligned face crop size (multiple of 16)")
    parser.add_argument("--force", action="store_true", help="replace an existing pack")
    parser.add_argument("--report", action="store_true",
                        help="also write report.json and contact_sheet.png (what was kept and why) into the pack")


@command("enroll", "footage → avatar pack", _enroll_arguments)
def cmd_enroll(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from avatar.enroll import EnrollConfig, enroll

    config = build_config(EnrollConfig, section="enroll", toml=toml, env=os.environ,
                          overrides={"crop_px": args.crop_px})
    result = enroll(args.video, args.out, config, force=args.force, progress=_progress(args),
                    write_report=args.report)
    summary = result.report
    print(json.dumps({"pack": str(result.pack), "frames": result.frame_count, "usable_frames": result.usable_frames,
                      "usable_s": summary["usable_s"], "trainable_s": summary["trainable_s"],
                      "rejected_frames": summary["rejected_frames"],
                      "idle_segments": len(summary["idle_segments"]), "holdout": list(result.holdout),
                      "base_range": list(result.base_range)}))
    return 0


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pack", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--config", "--preset", dest="preset", default="tiny",
                        help="model size: tiny (tests), demo (CPU live), base (GPU, latent: train-ae first), "
                        "tiny-latent (tests)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--objective", choices=["flow", "regression"],
                        help="flow: the diffusion teacher (default); regression: the 1-step L1 baseline")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its resume.pt")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing run")
    parser.add_argument("--from", dest="init_from", type=Path, metavar="PRIOR",
                        help="start from this prior's weights (a directory made by twincast prior; default for the "
                        "teacher: the prior shipped for the size, when one ships)")
    parser.add_argument("--from-scratch", action="store_true", help="start from random weights, not a prior")


@command("train", "avatar pack → trained renderer (a run directory)", _train_arguments)
def cmd_train(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from avatar.pack import AvatarPack
    from model.config import TrainConfig, preset
    from model.prior_card import choose_prior
    from model.train import train

    pack = AvatarPack.load(args.pack)
    chosen = preset(args.preset, crop_px=pack.meta.crop_px, mask_top=pack.meta.mask_top)
    train_config = build_config(TrainConfig, section="train", toml=toml, env=os.environ, base=chosen.train,
                                overrides={"steps": args.steps, "batch_size": args.batch_size,
                                           "learning_rate": args.learning_rate, "seed": args.seed,
                                           "objective": args.objective})
    init_from, start = choose_prior(args.preset, prior=args.init_from,
                                    from_scratch=args.from_scratch or train_config.objective != "flow",
                                    model=chosen.model)
    print(f"train: {start}", file=sys.stderr, flush=True)
    result = train(args.pack, args.out, chosen.model, train_config, force=args.force, resume=args.resume,
                   half=args.half, progress=_progress(args), init_from=init_from)
    print(json.dumps({"run": str(result.run), "role": result.role, "steps": result.steps,
                      "final_loss": round(result.final_loss, 5), "seconds": round(result.seconds, 1),
                      "init_from": None if init_from is None else str(init_from), "start": start}))
    return 0


def _prior_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("packs", type=Path, nargs="+", metavar="PACK", help="the people's avatar packs")
    parser.add_argument("--out", type=Path, required=True, help="the prior's directory")
    parser.add_argument("--config", "--preset", dest="preset", default="demo",
                        help="model size: demo (default), tiny; base or tiny-latent (a shared autoencoder first)")
    parser.add_argument("--licence", action="append", default=[],
                        help="each pack's licence, once per pack in order (recorded as given; default unknown)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-augment", action="store_true", help="no colour, mirror or affine augmentation")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted prior")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing prior")


@command("prior", "several avatar packs → a prior that new twins start from", _prior_arguments)
def cmd_prior(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from avatar.pack import AvatarPack
    from model.config import TrainConfig, preset
    from model.prior import NO_AUGMENTATION, Augmentation, train_prior

    first = AvatarPack.load(args.packs[0]).meta
    chosen = preset(args.preset, crop_px=first.crop_px, mask_top=first.mask_top)
    train_config = build_config(TrainConfig, section="train", toml=toml, env=os.environ, base=chosen.train,
                                overrides={"steps": args.steps, "batch_size": args.batch_size,
                                           "learning_rate": args.learning_rate, "seed": args.seed})
    result = train_prior(args.packs, args.out, chosen.model, train_config, licences=args.licence,
                         augmentation=NO_AUGMENTATION if args.no_augment else Augmentation(), force=args.force,
                         resume=args.resume, half=args.half, progress=_progress(args))
    print(json.dumps({"prior": str(result.run), "card": str(result.run / "prior.json"), "steps": result.steps,
                      "final_loss": round(result.final_loss, 5), "seconds": round(result.seconds, 1)}))
    return 0


def _train_ae_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pack", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="run directory (train the renderer into it next)")
    parser.add_argument("--config", "--preset", dest="preset", default="base",
                        help="a latent model size: base (GPU) or tiny-latent (tests)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing autoencoder")
    parser.add_argument("--from", dest="init_from", type=Path, metavar="PRIOR",
                        help="start from a latent prior's shared autoencoder and tune only its decoder (needed to "
                        "train the teacher --from that prior)")


@command("train-ae", "avatar pack → the person's autoencoder (latent models: base)", _train_ae_arguments)
def cmd_train_ae(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from avatar.pack import AvatarPack
    from model.autoencoder import train_autoencoder
    from model.config import TrainConfig, preset

    pack = AvatarPack.load(args.pack)
    chosen = preset(args.preset, crop_px=pack.meta.crop_px, mask_top=pack.meta.mask_top)
    train_config = build_config(TrainConfig, section="train", toml=toml, env=os.environ, base=chosen.train,
                                overrides={"autoencoder_steps": args.steps, "batch_size": args.batch_size,
                                           "seed": args.seed})
    result = train_autoencoder(args.pack, args.out, chosen.model, train_config, force=args.force, half=args.half,
                               progress=_progress(args), init_from=args.init_from)
    print(json.dumps({"autoencoder": str(result.path), "steps": result.steps,
                      "final_loss": round(result.final_loss, 5), "seconds": round(result.seconds, 1),
                      "holdout_psnr_face": round(result.holdout_psnr_face, 2),
                      "holdout_psnr_mouth": round(result.holdout_psnr_mouth, 2)}))
    return 0


def _distill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path)
    parser.add_argument("--pack", type=Path, help="the avatar pack (default: the one the teacher was trained on)")
    parser.add_argument("--config", "--preset", dest="preset", help="tiny, demo or base (default: the teacher's)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing student")
    parser.add_argument("--from", dest="init_from", type=Path, metavar="PRIOR",
                        help="start the student from this prior's distilled student (made by twincast "
                        "prior-distill) instead of a copy of the run's teacher (the default, and the better start)")


@command("distill", "few-step consistency student from a run's teacher", _distill_arguments)
def cmd_distill(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from model.checkpoint import load_checkpoint
    from model.distill import DISTILL_PRESETS, DistillConfig, distill
    from model.prior_card import student_start
    from twincast.errors import InputError

    teacher = load_checkpoint(args.run).model
    name = args.preset or teacher.preset
    if name not in DISTILL_PRESETS:
        raise InputError(f"unknown distill config {name!r}; expected one of {sorted(DISTILL_PRESETS)}")
    config = build_config(DistillConfig, section="distill", toml=toml, env=os.environ, base=DISTILL_PRESETS[name],
                          overrides={"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed})
    init_from, start = student_start(teacher.preset, args.init_from)
    print(f"distill: {start}", file=sys.stderr, flush=True)
    result = distill(args.run, config, pack_path=_pack_for_run(args), force=args.force, half=args.half,
                     progress=_progress(args), init_from=init_from)
    print(json.dumps({"student": str(result.student), "steps": result.steps,
                      "final_loss": round(result.final_loss, 5), "seconds": round(result.seconds, 1),
                      "init_from": None if init_from is None else str(init_from), "start": start}))
    return 0


def _prior_distill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prior", type=Path, help="a prior directory (made by twincast prior)")
    parser.add_argument("--pack", type=Path, action="append", default=[], dest="packs",
                        help="the prior's packs where they have moved, once per pack in its card's order "
                        "(default: where its card says they are)")
    parser.add_argument("--config", "--preset", dest="preset", help="distill settings: tiny, demo or base "
                        "(default: the prior's size)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--force", action="store_true", help="overwrite the prior's existing student")


@command("prior-distill", "a prior's teacher → a few-step prior student that new students start from",
         _prior_distill_arguments)
def cmd_prior_distill(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from model.distill import DISTILL_PRESETS, DistillConfig
    from model.prior import distill_prior
    from model.prior_card import read_card
    from twincast.errors import InputError

    name = args.preset or read_card(args.prior).get("preset")
    if name not in DISTILL_PRESETS:
        raise InputError(f"unknown distill config {name!r}; expected one of {sorted(DISTILL_PRESETS)}")
    config = build_config(DistillConfig, section="distill", toml=toml, env=os.environ, base=DISTILL_PRESETS[name],
                          overrides={"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed})
    result = distill_prior(args.prior, config, pack_paths=args.packs or None, force=args.force, half=args.half,
                           progress=_progress(args))
    print(json.dumps({"student": str(result.student), "steps": result.steps,
                      "final_loss": round(result.final_loss, 5), "seconds": round(result.seconds, 1)}))
    return 0


def _pack_for_run(args: argparse.Namespace) -> Path | None:
    """The pack to use for a run: --pack, or the demo pack for the committed demo run, else the recorded one."""
    from twincast.demo import DEMO_MODEL_DIR, cache_dir, demo_pack

    if args.pack is None and args.run.resolve() == DEMO_MODEL_DIR.resolve():
        return demo_pack(cache_dir(), progress=_progress(args))
    pack: Path | None = args.pack
    return pack


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path)
    parser.add_argument("--pack", type=Path, help="the avatar pack (default: the one the run was trained on)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N holdout frames")
    parser.add_argument("--no-video", action="store_true", help="skip the side-by-side eval.mp4")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


@command("eval", "quality report of a run on its pack's holdout block", _eval_arguments)
def cmd_eval(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from model.eval import evaluate

    report = evaluate(args.run, pack_path=_pack_for_run(args), limit=args.limit, video=not args.no_video,
                      progress=_progress(args))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        # sync: landmark mouth opening; sync_px: mouth-cavity pixels (see model.metrics.mouth_cavity_share)
        print(f"{'variant':<12} {'psnr_mouth':>10} {'ssim_mouth':>10} {'psnr_face':>9} {'sharp':>6} "
              f"{'sync':>6} {'lag':>4} {'sync_px':>7} {'lag':>4} {'ms/frame':>9}")
        for name, row in report["variants"].items():
            print(f"{name:<12} {row['psnr_mouth']:>10.2f} {row['ssim_mouth']:>10.3f} {row['psnr_face']:>9.2f} "
                  f"{row['sharpness_ratio']:>6.2f} {_or_nan(row['sync_corr']):>6.3f} {row['sync_lag_frames']:>4d} "
                  f"{_or_nan(row['sync_corr_pixels']):>7.3f} {row['sync_lag_frames_pixels']:>4d} "
                  f"{row['ms_per_frame']:>9.1f}")
    return 0


def _or_nan(value: float | None) -> float:
    """A report value for printing: null (an undefined correlation) as NaN."""
    return math.nan if value is None else value


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path)
    parser.add_argument("--variant", default="auto", help="auto (student if present), teacher, student, baseline")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx path")
    parser.add_argument("--steps", type=int, help="sampler steps unrolled into the graph")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--precision", default="fp32", help="fp32 or fp16 (float32 inputs and output either way)")


@command("export", "run → twin.onnx + twin.json sidecar", _export_arguments)
def cmd_export(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from export.onnx_export import export_run

    result = export_run(args.run, args.out, steps=args.steps, opset=args.opset, variant=args.variant,
                        precision=args.precision)
    print(json.dumps({"onnx": str(result.onnx), "sidecar": str(result.sidecar), "weights": str(result.weights),
                      "max_abs_error": result.max_abs_error}))
    return 0


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="footage of the person speaking (a minute or more is best)")
    parser.add_argument("--name", required=True, help="the twin's name (letters, digits, - and _)")
    parser.add_argument("--size", default="demo", help="demo (live on a CPU; default), base (GPU, latent); tiny and "
                        "tiny-latent are for tests")
    parser.add_argument("--budget", default="15m", help="wall time for all of it, e.g. 90s, 15m, 1h30m (default 15m)")
    parser.add_argument("--device", default="auto", help="where to train: auto (CUDA when there is one), cpu, cuda")
    parser.add_argument("--out", type=Path, help="the twin directory (default: twins/NAME)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads to train with (default 0: measure one and all cores; all only when they "
                        "are clearly faster)")
    parser.add_argument("--preview-every", default="2m", help="render a holdout preview this often while training")
    parser.add_argument("--force", action="store_true", help="start again, replacing what the directory holds")
    parser.add_argument("--prior", type=Path, help="start the teacher from this prior (default: the one shipped for "
                        "the size, when one ships)")
    parser.add_argument("--from-scratch", action="store_true", help="start the teacher from random weights")
    parser.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    parser.add_argument("--worker", action="store_true",
                        help="run as the server's training worker: lowest CPU priority, JSON lines, stop with the "
                        "parent process")
    parser.add_argument("--serve", action="store_true", help="when the twin is ready, serve it live")
    parser.add_argument("--host", help="with --serve: the address to listen on")
    parser.add_argument("--port", type=int, help="with --serve: the port (default 8080)")


@command("create", "video → a live twin in one step, within a time budget", _create_arguments)
def cmd_create(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from twincast.create import become_background_worker

    if args.worker:
        become_background_worker()  # first: the threads started later inherit the priority
    from avatar.enroll import EnrollConfig
    from model.schedule import parse_duration
    from twincast.create import CreateOptions, create
    from twincast.progress import JsonLines, PlainText, ProgressBar, Reporter

    options = CreateOptions(
        video=args.video, name=args.name, out=args.out or Path("twins") / args.name, size=args.size,
        budget_s=parse_duration(args.budget), device=args.device, threads=args.threads,
        preview_every_s=parse_duration(args.preview_every), force=args.force, prior=args.prior,
        from_scratch=args.from_scratch,
        enroll=build_config(EnrollConfig, section="enroll", toml=toml, env=os.environ))
    reporter: Reporter = (JsonLines() if args.json or args.worker else
                          PlainText() if args.quiet else ProgressBar())
    try:
        result = create(options, reporter)
    finally:
        reporter.close()
    if args.serve:
        from stream.config import ServeConfig
        from stream.server import TwinSource, serve

        config = build_config(ServeConfig, section="serve", toml=toml, env=os.environ, overrides={
            "host": args.host, "port": args.port,
            "operator_token": os.environ.get("TWINCAST_OPERATOR_TOKEN") or None,
            "viewer_token": os.environ.get("TWINCAST_VIEWER_TOKEN") or None})
        source = TwinSource(result.name, result.out / "pack", result.out / "twin.onnx")
        asyncio.run(serve(config, [source], announce=_announce))
    return 0


def _build_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="twin.onnx")
    parser.add_argument("--precision", default="fp16", help="fp16 (default) or fp32")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch the plan accepts")
    parser.add_argument("--opt-batch", type=int, default=8, help="batch the plan is tuned for")
    parser.add_argument("--cache-dir", type=Path, help="plan cache (default: plans/ beside the model)")
    parser.add_argument("--timing-cache", type=Path, help="development only: reuse kernel timings between builds")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached plan exists")


@command("build-engine", "compile twin.onnx into a cached TensorRT plan (NVIDIA GPU)", _build_engine_arguments)
def cmd_build_engine(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from engines.tensorrt_build import BatchProfile, build_plan

    profile = BatchProfile(1, min(args.opt_batch, args.max_batch), args.max_batch)
    cache_dir = args.cache_dir or args.model.resolve().parent / "plans"
    result = build_plan(args.model, precision=args.precision, profile=profile, cache_dir=cache_dir,
                        timing_cache=args.timing_cache, force=args.force)
    print(json.dumps({"plan": str(result.plan), "key": result.key, "cached": result.cached,
                      "seconds": round(result.seconds, 1)}))
    return 0


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="twin.onnx or a directory holding it")
    parser.add_argument("--engine", default="onnxruntime", help="an engine name, 'auto', or 'all'")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,4,8")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    parser.add_argument("--threads", type=int, default=0, help="engine CPU threads (0 = all cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", help="compute precision for torch/tensorrt: fp32 or fp16")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")


@command("bench", "frames/s and latency of the engines on an artifact", _bench_arguments)
def cmd_bench(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from engines.base import EngineOptions, engine_names
    from engines.bench import run_bench
    from export.onnx_export import artifact_for
    from twincast.demo import cache_dir
    from twincast.errors import InputError

    try:
        batches = [int(part) for part in args.batch.split(",") if part.strip()]
    except ValueError as exc:
        raise InputError(f"--batch {args.batch!r} must be comma-separated integers like 1,4,8") from exc
    if not batches or min(batches) < 1:
        raise InputError(f"--batch {args.batch!r} must list batch sizes ≥ 1")
    engines = engine_names() if args.engine == "all" else [args.engine]
    model = artifact_for(args.model, cache_dir())
    options = EngineOptions(threads=args.threads, device=args.device, precision=args.precision,
                            max_batch=max(batches))
    skipped: dict[str, str] = {}
    rows = run_bench(model, engines, batches, seconds=args.seconds, options=options,
                     skipped=skipped if args.engine == "all" else None)
    for name, reason in skipped.items():
        print(f"twincast bench: {name} skipped: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
    else:
        print(f"{'engine':<12} {'prec':>4} {'steps':>5} {'batch':>5} {'fps':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'warm-up':>8} {'MB':>7} {'vs eager':>8}")
        for row in rows:
            ratio = f"{row.vs_torch_eager:.2f}×" if row.vs_torch_eager else "-"
            memory = f"{row.memory_mb:.0f}" if row.memory_mb is not None else "-"
            print(f"{row.engine:<12} {row.precision:>4} {row.steps:>5} {row.batch:>5} {row.fps:>9.1f} "
                  f"{row.p50_ms:>8.2f} {row.p99_ms:>8.2f} {row.warmup_ms:>6.0f}ms {memory:>7} {ratio:>8}")
    return 0


def _serve_config(args: argparse.Namespace, toml: dict[str, Any]) -> Any:
    from stream.config import ServeConfig

    return build_config(ServeConfig, section="serve", toml=toml, env=os.environ, overrides={
        "host": args.host, "port": args.port, "engine": args.engine, "threads": args.threads, "pose": args.pose,
        "video_codec": args.video_codec, "lead_frames": args.lead_frames,
        "canvas": args.canvas, "canvas_background": args.canvas_background, "publish": args.publish or None,
        "operator_token": os.environ.get("TWINCAST_OPERATOR_TOKEN") or None,
        "viewer_token": os.environ.get("TWINCAST_VIEWER_TOKEN") or None,
    })


def _announce(line: str) -> None:
    print(line, flush=True)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--avatar", type=Path, help="avatar pack directory of the default twin")
    parser.add_argument("--model", type=Path, help="its twin.onnx (with twin.json beside it) or run directory")
    parser.add_argument("--twin", action="append", default=[], metavar="NAME=PACK,MODEL",
                        help="another twin, served as session NAME (repeatable)")
    _live_arguments(parser)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack-only", action="store_true", help="build the demo pack, print its path, exit")
    _live_arguments(parser)


def _live_arguments(parser: argparse.ArgumentParser) -> None:
    """The live server's flags, shared by ``serve`` and ``demo``."""
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--engine")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--pose", help="pose driver: loop (footage loop) or still")
    parser.add_argument("--video-codec", help="vp8 (default) or h264")
    parser.add_argument("--lead-frames", type=int, help="render lead ahead of playout, in frames")
    parser.add_argument("--canvas", help="compose the twin onto a WIDTHxHEIGHT canvas for the platforms: 720x1280 "
                        "or 1080x1920 (9:16), 1280x720 (default: the avatar pack's own frame)")
    parser.add_argument("--canvas-background", metavar="COLOUR|FILE",
                        help="behind the twin on the canvas: #rrggbb, or a picture or a video file to loop")
    parser.add_argument("--publish", action="append", metavar="janus://HOST:PORT/ROOM",
                        help="publish every session into this Janus VideoRoom (an SFU its viewers read from; "
                        "?secret=… for the room's secret, &create=0 to not create it; repeatable)")


@command("serve", "serve a twin live over WebRTC", _serve_arguments)
def cmd_serve(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from export.onnx_export import artifact_for
    from stream.server import TwinSource, serve
    from twincast.demo import cache_dir
    from twincast.errors import InputError

    config = _serve_config(args, toml)
    sources = [TwinSource.parse(text) for text in args.twin]
    if (args.avatar is None) != (args.model is None):
        raise InputError("--avatar and --model go together (the default twin); give both or neither")
    if args.avatar is not None:
        sources.insert(0, TwinSource("default", args.avatar, args.model))
    if not sources:
        raise InputError("nothing to serve: give --avatar PACK --model twin.onnx, or --twin NAME=PACK,MODEL")
    sources = [TwinSource(s.name, s.pack, artifact_for(s.model, cache_dir())) for s in sources]
    asyncio.run(serve(config, sources, announce=_announce))
    return 0


@command("demo", "serve the embedded default twin", _demo_arguments)
def cmd_demo(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from stream.server import TwinSource, serve
    from twincast.demo import cache_dir, demo_model, demo_pack

    config = _serve_config(args, toml)
    pack = demo_pack(cache_dir(), progress=_progress(args))
    if args.pack_only:
        print(pack)
        return 0
    model = demo_model(cache_dir())
    asyncio.run(serve(config, [TwinSource("default", pack, model)], announce=_announce))
    return 0


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, help="start a local Ray with N CPU render nodes")
    parser.add_argument("--address", help="join the Ray cluster at ADDR (auto: the one `ray start` made on this "
                        "machine): one render node per GPU (N CPU nodes with --workers N)")
    parser.add_argument("--twin", action="append", default=[], metavar="NAME=PACK,MODEL",
                        help="a twin every render node loads (repeatable); live twins are sessions of these")
    parser.add_argument("--capacity", type=int, help="live twins per render node (default: measured on each node)")
    _live_arguments(parser)


@command("cluster", "place live twins across render nodes on Ray, behind one front door", _cluster_arguments)
def cmd_cluster(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from export.onnx_export import artifact_for
    from stream.cluster import run_cluster
    from stream.server import TwinSource
    from twincast.demo import cache_dir

    sources = [TwinSource.parse(text) for text in args.twin]
    sources = [TwinSource(s.name, s.pack, artifact_for(s.model, cache_dir())) for s in sources]
    return run_cluster(_serve_config(args, toml), sources, workers=args.workers, address=args.address,
                       capacity=args.capacity, announce=_announce)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twincast`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        return COMMANDS[args.command].run(args, load_toml(args.config_file))
    except TwincastError as exc:
        print(f"twincast {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
