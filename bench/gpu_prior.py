"""The base prior on a GPU: trained on the prior's people, then twins of the two people it never saw, each from
the prior and from scratch on the same budget, scored on their holdout blocks.

    here:   .venv/bin/python -m bench.gpu_prior carry --out .carry/prior            (the four people, base crop)
    carry .carry/prior (34 MB) to the GPU machine with the working tree
    there:  PYTHONPATH=. python3 -m bench.gpu_prior run .carry/prior --prior-minutes 3 --budget 1m
    here:   .venv/bin/python -m bench.gpu_prior finish RESULTS_DIR .carry/prior     (lip sync: needs mediapipe)

``carry`` enrols the four people of ``bench.prior_study`` (their 384² synthetic clips, made by its ``footage``
stage) at the base crop and writes each as ``bench.pack_carry`` does, with JPEG quality ``CARRY_QUALITY`` so the
four and the repository fit what a GPU machine can be handed (64 MiB in all). Truth and renders are scored
against the decoded JPEG on both machines, so the comparison is fair; the absolute sharpness is the JPEG's.

``run`` (on the GPU; it needs no mediapipe or PyAV): measures this device's seconds per step, trains the prior
(``model.prior.train_prior``: a shared autoencoder for a quarter of ``--prior-minutes``, then the teacher) on the
two prior people, scores it on each held-out person with no tuning at all, then for each held-out person and each
start trains for ``--budget`` (training time only: the autoencoder a quarter, the teacher the rest, with the
warm-up, EMA and checkpoints ``twincast create`` plans for such stages; enrolment, eval and export not counted)
— from the prior (the autoencoder's decoder tuned from the shared one, the teacher from the prior's) and from
scratch — and scores the live variant (``teacher_2``) like ``twincast eval``'s image metrics. Renders come back
as JPEG for ``finish``. Every phase is written to ``$OUT/prior_run.json`` as it ends, so a run cut short still
reports. ``--preset tiny-latent`` tries the whole script on a CPU in a few minutes.

On one H100 (``bench.gpu_base``'s rates: autoencoder 0.097 s/step at batch 32, teacher 0.174 s at 64) the
defaults take about 8 minutes: the prior 3, four twins of 1 minute, the renders. Longer budgets (the 10 minutes
a base twin is given) do not fit one call: train the prior into ``--prior-dir`` once, then tune one person per
call (``--people``) on the same machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.gpu_base import Report
from bench.pack_carry import load_jpeg, save_jpeg, unpack
from bench.prior_study import PEOPLE, Person
from model.config import TrainConfig, preset

# JPEG quality of the carried crops: the four 45 s packs at 256² then come to 34 MB (39 MB at 60, 58 MB at 85),
# which with the repository's tracked files (31 MB) fits the 64 MiB a GPU machine is handed, barely.
CARRY_QUALITY = 45


def make_carry(cache: Path, out: Path, size: str, quality: int = CARRY_QUALITY) -> None:
    """Here: each person's clip (``bench.prior_study footage``) enrolled at ``size``'s crop, then carried."""
    from avatar.enroll import EnrollConfig, enroll
    from bench.pack_carry import pack as carry

    crop = preset(size).model.crop_px
    for person in PEOPLE:
        clip = cache / f"{person.name}-study-384.mp4"
        if not clip.is_file():
            raise SystemExit(f"{clip} is missing: run `python -m bench.prior_study footage --cache {cache}` first")
        pack_dir = cache / f"{person.name}-pack-{crop}"
        if not (pack_dir / "avatar.json").is_file():
            enroll(clip, pack_dir, EnrollConfig(crop_px=crop), force=True, progress=False, write_report=True)
        carry(pack_dir, out / person.name, quality=quality)
        print(f"{person.name}: {pack_dir} → {out / person.name}", flush=True)


def run(args: argparse.Namespace) -> None:
    """There: the prior, zero-shot, then prior vs scratch per held-out person on the same budget."""
    from model.autoencoder import train_autoencoder
    from model.checkpoint import load_checkpoint
    from model.eval import image_metrics, load_holdout, render, round_metric
    from model.prior import train_prior
    from model.schedule import SHARES, _train_config, measure_rates, parse_duration, resolved_device
    from model.train import train

    out = Path(os.environ.get("OUT") or tempfile.mkdtemp())
    scratch = Path(tempfile.mkdtemp())
    packs = {person.name: unpack(args.carried / person.name, scratch / person.name) for person in PEOPLE}
    first = next(iter(packs.values())).meta
    chosen = preset(args.preset, crop_px=first.crop_px, mask_top=first.mask_top)
    device = resolved_device("auto")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    report = Report(out / "prior_run.json", device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    torch=torch.__version__, date=time.strftime("%Y-%m-%d"), crop_px=first.crop_px,
                    args={key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()})
    rates = measure_rates(chosen, device)
    report.data["rates"] = {"teacher_s": rates.teacher_s, "autoencoder_s": rates.autoencoder_s}
    prior = args.prior_dir or scratch / "prior"

    def config_for(training_s: float) -> TrainConfig:
        """Settings for ``training_s`` of training split as ``create`` splits a latent twin's
        (``model.schedule.SHARES``): ``autoencoder_steps`` for the autoencoder, ``steps`` (with the warm-up, EMA
        and checkpoints ``create`` plans) for the teacher."""
        shares = SHARES["latent"]
        assert rates.autoencoder_s is not None  # measured for latent presets
        teacher = _train_config(replace(chosen.train, device=device), "flow",
                                max(1, int(shares["teacher"] * training_s / rates.teacher_s)), rates.teacher_s)
        return replace(teacher, autoencoder_steps=max(1, int(shares["autoencoder"] * training_s /
                                                             rates.autoencoder_s)))

    prior_config = config_for(args.prior_minutes * 60)
    in_prior = [person for person in PEOPLE if person.in_prior]
    held_out = [person for person in PEOPLE if not person.in_prior and (not args.people or person.name in
                                                                          args.people.split(","))]

    holdouts = {person.name: load_holdout(packs[person.name]) for person in held_out}

    def score(network: Any, person: Person, name: str) -> dict[str, Any]:
        inputs = holdouts[person.name]
        frames = render(network.to(torch.device(device)), inputs, 2)
        save_jpeg(out / f"render_{name}.npz", frames)
        return {key: round_metric(value) for key, value in image_metrics(frames, inputs.truth).items()}

    def make_prior() -> dict[str, Any]:
        result = train_prior([scratch / person.name for person in in_prior], prior, chosen.model, prior_config,
                             licences=[person.licence for person in in_prior], progress=False)
        card = json.loads((prior / "prior.json").read_text())
        return {"steps": result.steps, "autoencoder_steps": prior_config.autoencoder_steps,
                "final_loss": round(result.final_loss, 5), "teacher_s": round(result.seconds, 1),
                "autoencoder": {key: card["autoencoder"][key] for key in ("seconds", "final_loss", "holdout_psnr")}}

    if (prior / "prior.json").is_file():  # made by an earlier call (--prior-dir on a machine kept warm)
        report.data["prior"] = json.loads((prior / "prior.json").read_text())["steps"]
    elif not report.phase("prior", make_prior):
        return
    for person in held_out:
        name = f"{person.name}-zero-shot"
        report.phase(name, functools.partial(score, load_checkpoint(prior).build(), person, name))
    budget_s = parse_duration(args.budget)
    twin_config = config_for(budget_s)
    report.data["twin"] = {"autoencoder_steps": twin_config.autoencoder_steps, "teacher_steps": twin_config.steps}

    def twin(person: Person, origin: str) -> dict[str, Any]:
        run_dir = scratch / f"{person.name}-{origin}"
        init = prior if origin == "prior" else None
        started = time.perf_counter()
        autoencoder = train_autoencoder(scratch / person.name, run_dir, chosen.model, twin_config, progress=False,
                                        init_from=init)
        teacher = train(scratch / person.name, run_dir, chosen.model, twin_config, progress=False, init_from=init)
        return {"budget_s": budget_s, "train_s": round(time.perf_counter() - started, 1),
                "autoencoder_steps": autoencoder.steps, "teacher_steps": teacher.steps,
                "autoencoder_holdout_psnr_mouth": round(autoencoder.holdout_psnr_mouth, 2),
                "teacher_2": score(load_checkpoint(run_dir).build(), person, f"{person.name}-{origin}")}

    for person in held_out:
        for origin in ("prior", "scratch"):
            report.phase(f"{person.name}-{origin}", functools.partial(twin, person, origin))


def finish(args: argparse.Namespace) -> None:
    """Here: lip sync (landmarks and mouth pixels) for each render the GPU run brought back."""
    from model.eval import load_holdout, mouth_signals, round_metric, sync_metrics

    report = json.loads((args.results / "prior_run.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        for person in (p for p in PEOPLE if not p.in_prior):
            inputs = load_holdout(unpack(args.carried / person.name, Path(scratch) / person.name))
            truth_mouth = mouth_signals(inputs.truth)
            for name, phase in report["phases"].items():
                if name.startswith(f"{person.name}-"):
                    frames = load_jpeg(args.results / f"render_{name}.npz")
                    figures = phase.get("teacher_2", phase)
                    figures.update({key: round_metric(value)
                                    for key, value in sync_metrics(frames, truth_mouth).items()})
    (args.results / "prior_eval.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["phases"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    carry = commands.add_parser("carry")
    carry.add_argument("--cache", type=Path, default=Path("bench-cache"))
    carry.add_argument("--out", type=Path, default=Path(".carry/prior"))
    carry.add_argument("--preset", default="base")
    carry.add_argument("--quality", type=int, default=CARRY_QUALITY, help="JPEG quality of the carried crops")
    there = commands.add_parser("run")
    there.add_argument("carried", type=Path, help="the folder `carry` wrote")
    there.add_argument("--preset", default="base", help="base; tiny-latent to try the script on a CPU")
    there.add_argument("--prior-minutes", type=float, default=3.0)
    there.add_argument("--budget", default="1m", help="each twin's training time (autoencoder and teacher)")
    there.add_argument("--prior-dir", type=Path,
                       help="keep the prior here, and use the one already here (to split the work over calls)")
    there.add_argument("--people", default="", help="held-out people to tune, comma-separated (default: both)")
    done = commands.add_parser("finish")
    done.add_argument("results", type=Path)
    done.add_argument("carried", type=Path)
    args = parser.parse_args()
    if args.command == "carry":
        make_carry(args.cache, args.out, args.preset, args.quality)
    elif args.command == "run":
        run(args)
    else:
        finish(args)


if __name__ == "__main__":
    main()
