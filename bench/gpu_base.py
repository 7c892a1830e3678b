"""The `base` model trained on a GPU in one short prepared run, then scored on its holdout block.

    there:  PYTHONPATH=. python -m bench.gpu_base train CARRIED_PACK [--ae-steps N --steps N ...]
    here:   PYTHONPATH=. python -m bench.gpu_base finish RESULTS_DIR CARRIED_PACK

``train`` runs the whole recipe as `twincast train-ae`, `train`, `distill` and `train --objective regression`
do (the same library functions), on a pack carried by ``bench.pack_carry``; then it renders the holdout block
with every variant on the GPU and scores the image metrics. The GPU machine has no mediapipe or PyAV, so the
renders come back as JPEG and ``finish`` (here) adds the lip-sync metrics (landmark and pixel) and the side-by-side
video.
Each phase appends its figures to ``$OUT/base_run.json`` as it ends, so a run cut short still reports.

    there:  PYTHONPATH=. python -m bench.gpu_base budget CARRIED_PACK --budget 10m [--enroll-s 40]

``budget`` is time to twin on a GPU, as ``twincast create --budget`` plans it: this device's seconds per step of
each stage are measured (``model.schedule.measure_rates``), ``model.schedule.plan`` splits the budget (less the
enrollment time measured where the pack was made, ``--enroll-s``) into the autoencoder's, teacher's, students' and
baseline's steps at the preset's own batch sizes, and the stages run with those configs; the report holds the plan,
each stage's wall time and the eval as ``train`` writes it (``finish`` adds lip sync here). Compare its eval with a
``train`` run of the full schedule on the same pack.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from avatar.pack import AvatarPack
from bench.pack_carry import load_jpeg, save_jpeg, unpack
from model.autoencoder import train_autoencoder
from model.checkpoint import available_roles, load_checkpoint
from model.config import preset
from model.distill import DISTILL_PRESETS, distill
from model.eval import image_metrics, load_holdout, render, round_metric, time_per_frame, variant_plan
from model.train import train


class Report:
    """The run's figures, rewritten to ``path`` after every phase."""

    def __init__(self, path: Path, **header: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "phases": {}, "errors": {}}
        self.save()

    def phase(self, name: str, work: Callable[[], dict[str, Any]]) -> bool:
        """Run one phase, timing it and recording its figures or its error; returns whether it succeeded."""
        started = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            figures = work()
        except Exception:  # noqa: BLE001 - a failed phase is reported, the later ones still run
            self.data["errors"][name] = traceback.format_exc()[-2000:]
            print(f"[{name}] FAILED\n{self.data['errors'][name]}", flush=True)
            self.save()
            return False
        figures["wall_s"] = round(time.perf_counter() - started, 1)
        if torch.cuda.is_available():
            figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        self.data["phases"][name] = figures
        print(f"[{name}] {json.dumps(figures)}", flush=True)
        self.save()
        return True

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def run_train(args: argparse.Namespace) -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    scratch = Path(tempfile.mkdtemp())
    pack_path, run = scratch / "pack", scratch / "run"
    pack = unpack(args.carried, pack_path)
    chosen = preset(args.preset, crop_px=pack.meta.crop_px, mask_top=pack.meta.mask_top)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = Report(out / "base_run.json", device=device, torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                    frames=pack.meta.frame_count, crop_px=pack.meta.crop_px, args=vars(args) | {"carried": None})
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    short = replace(chosen.train, batch_size=args.batch, warmup_steps=args.warmup, checkpoint_every=0,
                    ema_decay=args.ema, autoencoder_steps=args.ae_steps)

    def autoencoder() -> dict[str, Any]:
        result = train_autoencoder(pack_path, run, chosen.model, replace(short, batch_size=args.ae_batch),
                                   progress=False)
        return {"steps": result.steps, "s_per_step": round(result.seconds / result.steps, 4),
                "final_loss": round(result.final_loss, 4), "holdout_psnr_face": round(result.holdout_psnr_face, 2),
                "holdout_psnr_mouth": round(result.holdout_psnr_mouth, 2)}

    def trainer(objective: str, steps: int) -> Callable[[], dict[str, Any]]:
        def work() -> dict[str, Any]:
            config = replace(short, objective=objective, steps=steps)
            result = train(pack_path, run, chosen.model, config, force=True, progress=False)
            return {"steps": steps, "batch": config.batch_size, "s_per_step": round(result.seconds / steps, 4),
                    "final_loss": round(result.final_loss, 5)}
        return work

    def student() -> dict[str, Any]:
        config = replace(DISTILL_PRESETS[args.preset], steps=args.distill_steps, batch_size=args.batch,
                         learning_rate=args.distill_lr)
        result = distill(run, config, force=True, progress=False)
        return {"steps": result.steps, "batch": config.batch_size,
                "s_per_step": round(result.seconds / result.steps, 4), "final_loss": round(result.final_loss, 5)}

    if not report.phase("autoencoder", autoencoder):
        return
    if not report.phase("teacher", trainer("flow", args.steps)):
        return
    report.phase("student", student)
    report.phase("baseline", trainer("regression", args.baseline_steps))
    report.phase("eval", lambda: score_variants(run, pack, out))


def run_budget(args: argparse.Namespace) -> None:
    """Time to twin on this device: the budget planned as ``twincast create`` plans it, then every stage run."""
    from model.schedule import FixedCosts, measure_rates, parse_duration, plan, resolved_device

    started = time.perf_counter()
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    scratch = Path(tempfile.mkdtemp())
    pack_path, run = scratch / "pack", scratch / "run"
    pack = unpack(args.carried, pack_path)
    chosen = preset(args.preset, crop_px=pack.meta.crop_px, mask_top=pack.meta.mask_top)
    device = resolved_device("auto")
    report = Report(out / "base_run.json", device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    torch=torch.__version__, date=time.strftime("%Y-%m-%d"), frames=pack.meta.frame_count,
                    crop_px=pack.meta.crop_px, args=vars(args) | {"carried": None})
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    rates = measure_rates(chosen, device)
    start, end = pack.meta.holdout
    fixed = FixedCosts(enroll_s=args.enroll_s, frame_count=pack.meta.frame_count, holdout_frames=end - start,
                       face_ms_per_frame=args.face_ms)
    chosen_plan = plan(args.preset, parse_duration(args.budget), fixed, rates, device=device,
                       overhead_s=time.perf_counter() - started)
    report.data["plan"] = chosen_plan.to_dict()
    report.data["measured_s"] = round(time.perf_counter() - started, 1)
    report.save()
    print(f"[plan] {json.dumps({stage.name: [stage.steps, round(stage.estimate_s)] for stage in chosen_plan.stages})}",
          flush=True)

    def autoencoder() -> dict[str, Any]:
        assert chosen_plan.autoencoder is not None
        result = train_autoencoder(pack_path, run, chosen.model, chosen_plan.autoencoder, progress=False)
        return {"steps": result.steps, "holdout_psnr_mouth": round(result.holdout_psnr_mouth, 2)}

    def trainer(config: Any) -> Callable[[], dict[str, Any]]:
        def work() -> dict[str, Any]:
            result = train(pack_path, run, chosen.model, config, force=True, progress=False)
            return {"steps": config.steps, "batch": config.batch_size, "final_loss": round(result.final_loss, 5)}
        return work

    def student() -> dict[str, Any]:
        assert chosen_plan.student is not None
        result = distill(run, chosen_plan.student, pack_path=pack_path, force=True, progress=False)
        return {"steps": result.steps, "final_loss": round(result.final_loss, 5)}

    if chosen_plan.autoencoder is not None and not report.phase("autoencoder", autoencoder):
        return
    if not report.phase("teacher", trainer(chosen_plan.teacher)):
        return
    if chosen_plan.student is not None:
        report.phase("student", student)
    if chosen_plan.baseline is not None:
        report.phase("baseline", trainer(chosen_plan.baseline))
    report.phase("eval", lambda: score_variants(run, pack, out))
    report.data["wall_s"] = round(time.perf_counter() - started + args.enroll_s, 1)  # with the enrollment made here
    report.save()
    print(f"[done] time to twin {report.data['wall_s']} s against a budget of {args.budget}", flush=True)


def score_variants(run: Path, pack: AvatarPack, out: Path) -> dict[str, Any]:
    """Render the holdout block with each variant on this device; image metrics and ms/frame per variant."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inputs = load_holdout(pack)
    variants: dict[str, Any] = {}
    roles = available_roles(run)
    networks = {role: load_checkpoint(run, role).build().to(device) for role in roles}
    for name, role, steps in variant_plan(roles)[0]:
        frames = render(networks[role], inputs, steps)
        save_jpeg(out / f"render_{name}.npz", frames)
        variants[name] = {key: round_metric(value) for key, value in image_metrics(frames, inputs.truth).items()}
        variants[name]["ms_per_frame"] = round(time_per_frame(networks[role], inputs, steps), 3)
    return {"holdout_frames": int(len(inputs.indices)), "variants": variants}


def run_finish(args: argparse.Namespace) -> None:
    """Here: add the lip-sync metrics (landmark and pixel) to the GPU run's report and write the side-by-side video."""
    from model.eval import mouth_signals, sync_metrics, write_side_by_side

    results: Path = args.results
    report = json.loads((results / "base_run.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        pack_path = Path(scratch) / "pack"
        inputs = load_holdout(unpack(args.carried, pack_path))
        truth_mouth = mouth_signals(inputs.truth)
        renders = {}
        for name, row in report["phases"]["eval"]["variants"].items():
            renders[name] = load_jpeg(results / f"render_{name}.npz")
            sync = sync_metrics(renders[name], truth_mouth)
            row.update({key: round_metric(value) for key, value in sync.items()})
        if args.video:
            write_side_by_side(args.video, inputs, renders)
    (results / "base_eval.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["phases"]["eval"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train")
    run.add_argument("carried", type=Path, help="the pack, as bench.pack_carry wrote it")
    run.add_argument("--preset", default="base", help="base; tiny-latent to try the script on a CPU")
    run.add_argument("--ae-steps", type=int, default=1500)
    run.add_argument("--ae-batch", type=int, default=32)
    run.add_argument("--steps", type=int, default=600)
    run.add_argument("--distill-steps", type=int, default=200)
    run.add_argument("--distill-lr", type=float, default=1e-4)
    run.add_argument("--baseline-steps", type=int, default=250)
    run.add_argument("--batch", type=int, default=64)
    run.add_argument("--warmup", type=int, default=100)
    run.add_argument("--ema", type=float, default=0.995)
    budget = commands.add_parser("budget")
    budget.add_argument("carried", type=Path, help="the pack, as bench.pack_carry wrote it")
    budget.add_argument("--preset", default="base", help="base; tiny-latent to try the script on a CPU")
    budget.add_argument("--budget", default="10m", help="wall time for all of it, enrollment included")
    budget.add_argument("--enroll-s", type=float, default=40.0, help="the enrollment's seconds where it was made")
    budget.add_argument("--face-ms", type=float, default=0.0,
                        help="FaceMesh ms per frame for eval's lip sync (0: it runs later, in finish)")
    finish = commands.add_parser("finish")
    finish.add_argument("results", type=Path)
    finish.add_argument("carried", type=Path)
    finish.add_argument("--video", type=Path)
    args = parser.parse_args()
    {"train": run_train, "budget": run_budget, "finish": run_finish}[args.command](args)


if __name__ == "__main__":
    main()
