"""How a time budget should be split between the teacher, the student and the baseline: one run per split.

    .venv/bin/python -m bench.schedule --size demo --budget 15m --split teacher=1 --split teacher=0.75,student=0.25 \
        --split baseline=1 --out bench/results/schedule_demo_cpu.json

The footage is the new person's (``assets/portrait-hopper.jpg``, 45 s of synthetic speech at 384², the default
text), enrolled once at the size's crop. This machine's speeds are measured once, and every split gets the steps
``model.schedule.plan`` gives it for the same budget: the same compute, shared differently (on a shared machine
their wall times differ; the steps do not). Each run is scored on the holdout block like ``twincast eval``
(mouth and face PSNR/SSIM, lip sync by mouth pixels and landmarks) for every variant it holds; the report says
which 1-2 step variant each split would put live. Results are written after every split.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from avatar.enroll import EnrollConfig, enroll, holdout_block
from avatar.pack import AvatarPack
from avatar.preflight import check_footage
from avatar.synth import DEFAULT_TEXT, SynthConfig, synth_footage
from model.config import preset
from model.eval import load_holdout, mouth_signals, render, round_metric, score, variant_plan
from model.schedule import FixedCosts, measure_rates, parse_duration, pick_threads, plan
from twincast.create import LIVE_VARIANTS, best_live_variant

PORTRAIT = Path(__file__).resolve().parent.parent / "assets" / "portrait-hopper.jpg"


def footage(cache: Path, crop_px: int) -> tuple[Path, Path]:
    """The new person's clip and its pack at ``crop_px`` (made once into ``cache``)."""
    clip = cache / "hopper-384.mp4"
    if not clip.is_file():
        synth_footage(PORTRAIT, DEFAULT_TEXT, clip, SynthConfig(size_px=384, seed=7), progress=False)
    pack = cache / f"hopper-pack-{crop_px}"
    if not (pack / "avatar.json").is_file():
        enroll(clip, pack, EnrollConfig(crop_px=crop_px), force=True, progress=False, write_report=True)
    return clip, pack


def parse_split(text: str) -> dict[str, float]:
    """``teacher=0.75,student=0.25`` → {"teacher": 0.75, "student": 0.25}."""
    return {name: float(value) for name, value in (part.split("=") for part in text.split(","))}


def run_split(split: dict[str, float], pack_path: Path, run: Path, size: str, budget_s: float,
              fixed: FixedCosts, rates: Any, threads: int) -> dict[str, Any]:
    """Train the stages ``split`` gives time to, then score every variant; returns the figures."""
    from model.distill import distill
    from model.train import train

    # A split without the teacher (the baseline alone) is planned as the teacher alone, then given its time.
    chosen = plan(size, budget_s, fixed, rates, threads=threads, shares=split if "teacher" in split else {"teacher": 1})
    pack = AvatarPack.load(pack_path)
    model = preset(size, crop_px=pack.meta.crop_px, mask_top=pack.meta.mask_top).model
    shutil.rmtree(run, ignore_errors=True)
    walls: dict[str, float] = {}
    trained: dict[str, int] = {}
    started = time.monotonic()
    if "teacher" in split:  # every variant starts from the teacher; a baseline-only split trains none
        train(pack_path, run, model, chosen.teacher, progress=False)
        walls["teacher"], trained["teacher"] = time.monotonic() - started, chosen.teacher.steps
    if chosen.student is not None:
        mark = time.monotonic()
        distill(run, chosen.student, pack_path=pack_path, progress=False)
        walls["student"], trained["student"] = time.monotonic() - mark, chosen.student.steps
    if "baseline" in split:
        mark = time.monotonic()
        baseline = chosen.baseline or replace(chosen.teacher, objective="regression")
        if chosen.baseline is None:  # the baseline alone: it gets the teacher's planned time at its own speed
            steps = int(chosen.teacher.steps * rates.teacher_s / rates.baseline_s)
            baseline = replace(baseline, steps=steps, checkpoint_every=0)
        train(pack_path, run, model, baseline, progress=False)
        walls["baseline"] = time.monotonic() - mark
        trained["baseline"] = baseline.steps
    figures = score_run(run, pack)
    live = [name for name in LIVE_VARIANTS if name in figures]
    return {"split": split, "steps": trained,
            "planned_s": {stage.name: round(stage.estimate_s, 1) for stage in chosen.stages},
            "wall_s": {name: round(value, 1) for name, value in walls.items()}, "variants": figures,
            "live_variant": best_live_variant(figures) if live else None}


def score_run(run: Path, pack: AvatarPack) -> dict[str, Any]:
    """Every variant the run holds, scored as ``twincast eval`` scores it (without the video)."""
    from model.checkpoint import available_roles, load_checkpoint

    inputs = load_holdout(pack)
    truth_mouth = mouth_signals(inputs.truth)
    roles = available_roles(run)
    networks = {role: load_checkpoint(run, role).build() for role in roles}
    figures = {}
    for name, role, steps in variant_plan(roles)[0]:
        metrics = score(render(networks[role], inputs, steps), inputs, truth_mouth)
        figures[name] = {key: round_metric(value) for key, value in metrics.items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo")
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--split", action="append", required=True, help="e.g. teacher=0.75,student=0.25")
    parser.add_argument("--cache", type=Path, default=Path("bench-cache"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    budget_s = parse_duration(args.budget)
    chosen = preset(args.size)
    clip, pack_path = footage(args.cache, chosen.model.crop_px)
    checked = check_footage(clip, EnrollConfig(crop_px=chosen.model.crop_px))
    pack = AvatarPack.load(pack_path)
    start, end = holdout_block(pack.meta.frame_count, EnrollConfig())
    threads, timings = pick_threads(chosen, "cpu")
    rates = measure_rates(chosen, "cpu", threads)
    fixed = FixedCosts(enroll_s=checked.enroll_estimate_s, frame_count=pack.meta.frame_count,
                       holdout_frames=end - start, face_ms_per_frame=checked.first_pass_ms_per_frame)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "size": args.size, "budget_s": budget_s,
                              "threads": threads, "threads_measured": timings, "rates": asdict(rates),
                              "fixed": asdict(fixed), "frames": pack.meta.frame_count, "runs": []}
    for text in args.split:
        result = run_split(parse_split(text), pack_path, args.cache / "schedule-run", args.size, budget_s, fixed,
                           rates, threads)
        report["runs"].append(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        live = result["live_variant"]
        print(f"{text}: steps {result['steps']}, wall {result['wall_s']}, live {live} "
              f"{result['variants'][live]['psnr_mouth'] if live else '-'} dB", flush=True)


if __name__ == "__main__":
    main()
