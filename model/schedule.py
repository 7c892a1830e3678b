"""The training schedule for a time budget: how many steps each stage gets, from speeds measured on this machine.

``measure_rates`` times a few real optimiser steps of each stage (teacher, student, baseline, autoencoder) on
random batches of the model's shapes, and a few renders: the cost of a step does not depend on what the pictures
show, so this is measured in seconds, before any footage is enrolled. ``plan`` then gives the training stages
the budget left after enrollment, eval and export (each estimated from measurements too), split between them in
fixed shares (``SHARES``; ``bench.schedule`` compares other splits on the same budget), and scales the warm-up
and the EMA of weights to the number of steps a stage gets.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from model.config import ModelConfig, Preset, TrainConfig, preset
from model.data import Batch
from model.distill import DISTILL_PRESETS, DistillConfig, Distiller
from model.eval import VARIANTS
from model.loop import optimise, pick_device
from model.networks import Autoencoder, TwinDenoiser
from model.renderer import TwinRenderer
from model.train import flow_step, regression_step
from twincast.errors import InputError

TRAINING_STAGES = ("autoencoder", "teacher", "student", "baseline")
STAGES = ("enroll", *TRAINING_STAGES, "eval", "export")
# Shares of the training time (pixel models have no autoencoder). Measured on the demo size, 15 minutes, on the
# 2-core development machine (bench.schedule, BENCHMARKS.md): see there for the alternatives tried.
SHARES: dict[str, dict[str, float]] = {
    "pixel": {"teacher": 1.0},
    "latent": {"autoencoder": 0.25, "teacher": 0.75},
}
MIN_STEPS = {"autoencoder": 50, "teacher": 20, "student": 30, "baseline": 20}  # fewer: the stage is not worth it
EXPORT_ESTIMATE_S = {"tiny": 4.0, "tiny-latent": 5.0, "demo": 15.0, "base": 45.0}  # measured once, see BENCHMARKS
STAGE_OVERHEAD_S = 3.0  # loading the pack, building the networks, the last checkpoint
CHECKPOINT_EVERY_S = 30.0  # resumable state this often: a crash or Ctrl-C loses at most this much training
SAFETY = 0.93  # plan to this share of the budget: estimates are measured, but a shared machine's speed varies
TIMED_STEPS = 3
PARALLEL_GAIN = 1.5  # all cores only when they make a step at least this much faster than one thread
RENDER_BATCH = 16


@dataclass(frozen=True)
class Rates:
    """Seconds per optimiser step of each training stage, and milliseconds per frame of one sampler step of the
    renderer (at batch ``RENDER_BATCH`` and at batch 1), as measured on this machine."""

    teacher_s: float
    student_s: float
    baseline_s: float
    autoencoder_s: float | None  # None: a pixel model, which has no autoencoder
    render_step_ms: float
    render_step_ms_batch1: float

    def seconds_per_step(self, stage: str) -> float:
        """The measured cost of one step of ``stage``."""
        value = {"teacher": self.teacher_s, "student": self.student_s, "baseline": self.baseline_s,
                 "autoencoder": self.autoencoder_s}[stage]
        if value is None:
            raise InputError(f"no {stage} stage for a pixel model")
        return value


@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan: its optimiser steps (0 for the stages without), its estimated seconds, and what it
    does in words."""

    name: str
    steps: int
    estimate_s: float
    note: str


@dataclass(frozen=True)
class Plan:
    """The stages to run, in order, with the settings of each training stage."""

    size: str
    device: str
    budget_s: float
    stages: tuple[StagePlan, ...]
    teacher: TrainConfig
    baseline: TrainConfig | None
    student: DistillConfig | None
    autoencoder: TrainConfig | None  # its ``autoencoder_steps`` is the stage's steps
    rates: Rates
    skipped: dict[str, str] = field(default_factory=dict)  # stage → why it is not run

    @property
    def estimate_s(self) -> float:
        """Estimated seconds of all stages together."""
        return sum(stage.estimate_s for stage in self.stages)

    def stage(self, name: str) -> StagePlan:
        """The plan of stage ``name``.

        Raises:
            KeyError: the plan does not run it.
        """
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Read a plan written by ``to_dict``."""
        def train_config(value: dict[str, Any] | None) -> TrainConfig | None:
            return TrainConfig(**value) if value is not None else None

        teacher = train_config(data["teacher"])
        assert teacher is not None
        return cls(size=data["size"], device=data["device"], budget_s=float(data["budget_s"]),
                   stages=tuple(StagePlan(**stage) for stage in data["stages"]), teacher=teacher,
                   baseline=train_config(data["baseline"]), autoencoder=train_config(data["autoencoder"]),
                   student=DistillConfig(**data["student"]) if data["student"] is not None else None,
                   rates=Rates(**data["rates"]), skipped=dict(data.get("skipped", {})))


@dataclass(frozen=True)
class FixedCosts:
    """The stages whose time does not depend on the budget, as estimated for this footage."""

    enroll_s: float
    frame_count: int
    holdout_frames: int
    face_ms_per_frame: float  # FaceMesh on one picture, as eval's lip-sync measure runs it


def measure_rates(chosen: Preset, device_name: str = "auto", threads: int = 0,
                  timed_steps: int = TIMED_STEPS) -> Rates:
    """Time ``timed_steps`` real steps of each training stage (after one untimed step that sets things up) on
    random batches of the preset's shapes, and the renderer's sampler step."""
    from model.loop import seeded_device

    device, generator = seeded_device(threads, 0, device_name)
    model_config = chosen.model
    network = TwinDenoiser(model_config).to(device).train()
    optimizer = torch.optim.AdamW(network.trainable(), lr=1e-5)
    batch = RandomBatches(chosen, generator)

    config = chosen.train

    def teacher() -> None:
        optimise(optimizer, flow_step(network, batch(), config, generator, device), network.trainable())

    def baseline() -> None:
        optimise(optimizer, regression_step(network, batch(), config, generator, device), network.trainable())

    teacher_s = _seconds_per_call(teacher, timed_steps, device)
    baseline_s = _seconds_per_call(baseline, timed_steps, device)
    distill_config = DISTILL_PRESETS.get(model_config.preset, DistillConfig())
    distiller = Distiller.start(network.eval(), distill_config)
    student_s = _seconds_per_call(lambda: distiller.step(batch(), distill_config, generator, device),
                                  timed_steps, device)
    autoencoder_s = _time_autoencoder(model_config, batch, device, timed_steps) if model_config.latent else None
    render_ms, render_ms_1 = _time_render(network.eval(), model_config, device, generator)
    return Rates(teacher_s=teacher_s, student_s=student_s, baseline_s=baseline_s, autoencoder_s=autoencoder_s,
                 render_step_ms=render_ms, render_step_ms_batch1=render_ms_1)


def pick_threads(chosen: Preset, device_name: str = "cpu") -> tuple[int, dict[int, float]]:
    """On a CPU with several cores: all of them if a teacher step is at least ``PARALLEL_GAIN`` times faster with
    them than with one thread, else one; with the seconds per step measured for each. Elsewhere: 0 (all).

    One thread unless all cores clearly pay, because a parallel step stalls whenever other work takes one of its
    cores (its threads wait for each other at every operation): on the shared 2-core development machine a tiny
    teacher step took 0.07 s with one thread and 2.6 s with two while other work ran, and a run that measured two
    threads as fast as one in a quiet moment took 8 times its plan once the other work came back.
    """
    cores = os.cpu_count() or 1
    if pick_device(device_name).type != "cpu" or cores == 1:
        return 0, {}
    timings = {threads: _teacher_seconds(chosen, threads, device_name) for threads in (1, cores)}
    return (cores if timings[cores] * PARALLEL_GAIN <= timings[1] else 1), timings


def _teacher_seconds(chosen: Preset, threads: int, device_name: str) -> float:
    from model.loop import seeded_device

    device, generator = seeded_device(threads, 0, device_name)
    network = TwinDenoiser(chosen.model).to(device).train()
    optimizer = torch.optim.AdamW(network.trainable(), lr=1e-5)
    batches = RandomBatches(chosen, generator)

    def step() -> None:
        loss = flow_step(network, batches(), chosen.train, generator, device)
        optimise(optimizer, loss, network.trainable())

    return _seconds_per_call(step, 2, device)


class RandomBatches:
    """Training batches of a preset's shapes filled with noise: what a step costs does not depend on the
    pictures."""

    def __init__(self, chosen: Preset, generator: torch.Generator) -> None:
        self.model = chosen.model
        self.batch_size = chosen.train.batch_size
        self.generator = generator

    def __call__(self) -> Batch:
        crop = self.model.crop_px
        images = torch.rand(2, self.batch_size, 3, crop, crop, generator=self.generator) * 2 - 1
        mel = torch.randn(self.batch_size, self.model.mel_bins, self.model.mel_frames, generator=self.generator)
        return Batch(target=images[0], reference=images[1], mel=mel)


def _seconds_per_call(work: Callable[[], object], count: int, device: torch.device) -> float:
    work()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        work()
    _synchronize(device)
    return (time.perf_counter() - started) / count


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_autoencoder(model_config: ModelConfig, batch: Callable[[], Batch], device: torch.device,
                      count: int) -> float:
    from model.autoencoder import autoencoder_loss, reconstruction_weight

    autoencoder = Autoencoder(model_config).to(device).train()
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=1e-5)
    weight = reconstruction_weight(model_config, device)

    def step() -> None:
        target = batch().target.to(device)
        optimise(optimizer, autoencoder_loss(autoencoder, target, weight, device), list(autoencoder.parameters()))

    return _seconds_per_call(step, count, device)


def _time_render(network: TwinDenoiser, model_config: ModelConfig, device: torch.device,
                 generator: torch.Generator) -> tuple[float, float]:
    """Milliseconds per frame of one sampler step, at batch ``RENDER_BATCH`` and at batch 1."""
    renderer = TwinRenderer(network, 1)
    crop = model_config.crop_px

    def per_frame_ms(size: int) -> float:
        images = (torch.rand(size, 3, crop, crop, generator=generator) * 2 - 1).to(device)
        mel = torch.randn(size, model_config.mel_bins, model_config.mel_frames, generator=generator).to(device)
        noise = torch.randn(network.noise_shape(size), generator=generator).to(device)
        with torch.inference_mode():
            return 1000 * _seconds_per_call(lambda: renderer(images, images, mel, noise), 2, device) / size

    return per_frame_ms(RENDER_BATCH), per_frame_ms(1)


def stage_shares(model_config: ModelConfig, shares: dict[str, float] | None = None) -> dict[str, float]:
    """The share of the training time each training stage gets (``SHARES``, or ``shares`` when given)."""
    chosen = dict(shares if shares is not None else SHARES["latent" if model_config.latent else "pixel"])
    if any(stage not in TRAINING_STAGES for stage in chosen) or any(v < 0 for v in chosen.values()):
        raise InputError(f"stage shares {chosen} must name stages of {TRAINING_STAGES} with shares ≥ 0")
    if model_config.latent != (chosen.get("autoencoder", 0) > 0):
        raise InputError("a latent model needs an autoencoder share, and a pixel model must not have one")
    if chosen.get("teacher", 0) <= 0:
        raise InputError("the teacher needs a share of the training time: every variant starts from it")
    total = sum(chosen.values())
    return {stage: value / total for stage, value in chosen.items() if value > 0}


def ema_for(steps: int, preset_decay: float) -> float:
    """The EMA decay for a stage of ``steps`` steps: the preset's, unless its horizon (1 / (1 − decay) steps) would
    be more than a fifth of the run, where it would average in the early, untrained weights."""
    if preset_decay <= 0:
        return 0.0
    return min(preset_decay, max(0.0, 1.0 - 5.0 / max(steps, 1)))


def eval_estimate_s(rates: Rates, holdout_frames: int, face_ms: float, roles: list[str]) -> float:
    """Seconds ``model.eval.evaluate`` should take for a run holding ``roles``: every variant renders the holdout
    block (at batch 16) and is timed at batch 1 (9 renders), and FaceMesh reads the truth and every variant."""
    variants = [steps for role, steps in VARIANTS.values() if role in roles]
    renders_ms = sum(holdout_frames * steps * rates.render_step_ms + 9 * steps * rates.render_step_ms_batch1
                     for steps in variants)
    faces_ms = (len(variants) + 1) * holdout_frames * face_ms
    return (renders_ms + faces_ms) / 1000 + STAGE_OVERHEAD_S


def plan(size: str, budget_s: float, fixed: FixedCosts, rates: Rates, *, device: str = "cpu", threads: int = 0,
         shares: dict[str, float] | None = None, overhead_s: float = 0.0) -> Plan:
    """Steps for each training stage so that all stages together fit in ``budget_s``.

    Args:
        size: a model preset (tiny, tiny-latent, demo, base).
        fixed: enrollment's estimate and the footage's frame counts.
        rates: ``measure_rates`` on this machine.
        device, threads: where the training runs (recorded in each stage's settings).
        shares: training time per stage, instead of ``SHARES`` (for ``bench.schedule``).
        overhead_s: time already spent (measuring the rates, looking at the footage).

    Raises:
        InputError: the budget does not leave the teacher ``MIN_STEPS`` steps.
    """
    chosen = preset(size)
    split = stage_shares(chosen.model, shares)
    export_s = EXPORT_ESTIMATE_S.get(size, EXPORT_ESTIMATE_S["base"])
    fixed_s = overhead_s + fixed.enroll_s + export_s
    eval_roles = ["teacher", *(role for role in ("student", "baseline") if role in split)]
    eval_s = eval_estimate_s(rates, fixed.holdout_frames, fixed.face_ms_per_frame, eval_roles)
    training_s = SAFETY * budget_s - fixed_s - eval_s - STAGE_OVERHEAD_S * len(split)
    steps = {stage: int(max(0.0, training_s) * share / rates.seconds_per_step(stage))
             for stage, share in split.items()}
    skipped = {stage: f"{count} steps would fit, fewer than the {MIN_STEPS[stage]} worth running"
               for stage, count in steps.items() if count < MIN_STEPS[stage] and stage != "teacher"}
    if steps["teacher"] < MIN_STEPS["teacher"] or ("autoencoder" in skipped):
        least_training_s = max(MIN_STEPS[stage] * rates.seconds_per_step(stage) / split[stage]
                               for stage in ("teacher", "autoencoder") if stage in split)
        needed = (fixed_s + eval_s + STAGE_OVERHEAD_S * len(split) + least_training_s) / SAFETY
        raise InputError(f"a budget of {format_duration(budget_s)} is too short for the {size} size here: "
                         f"enrollment ({format_duration(fixed.enroll_s)}), eval ({format_duration(eval_s)}) and "
                         f"export ({format_duration(export_s)}) leave too little time to train; give --budget "
                         f"{format_duration(math.ceil(needed / 10) * 10)} or more")
    for stage in skipped:
        del steps[stage]
    if skipped:  # what a skipped stage would have had goes to the teacher
        freed = sum(split[stage] for stage in skipped) * max(0.0, training_s)
        steps["teacher"] += int(freed / rates.teacher_s)
        eval_roles = [role for role in eval_roles if role not in skipped]
        eval_s = eval_estimate_s(rates, fixed.holdout_frames, fixed.face_ms_per_frame, eval_roles)
    base = replace(chosen.train, threads=threads, device=device)
    teacher = _train_config(base, "flow", steps["teacher"], rates.teacher_s)
    baseline = _train_config(base, "regression", steps["baseline"], rates.baseline_s) if "baseline" in steps else None
    student = None
    if "student" in steps:
        preset_distill = DISTILL_PRESETS.get(size, DistillConfig())
        student = replace(preset_distill, steps=steps["student"], threads=threads, device=device,
                          ema_decay=ema_for(steps["student"], preset_distill.ema_decay))
    autoencoder = replace(base, autoencoder_steps=steps["autoencoder"]) if "autoencoder" in steps else None
    stages = [StagePlan("enroll", 0, fixed.enroll_s, f"{fixed.frame_count} frames")]
    for stage in TRAINING_STAGES:
        if stage in steps:
            count = steps[stage]
            stages.append(StagePlan(stage, count, count * rates.seconds_per_step(stage) + STAGE_OVERHEAD_S,
                                    _training_note(stage, count, chosen)))
    stages.append(StagePlan("eval", 0, eval_s, f"{len([r for r in VARIANTS.values() if r[0] in eval_roles])} "
                                               f"variants on {fixed.holdout_frames} holdout frames"))
    stages.append(StagePlan("export", 0, export_s, "the best 1-2 step variant to ONNX"))
    return Plan(size=size, device=device, budget_s=budget_s, stages=tuple(stages), teacher=teacher,
                baseline=baseline, student=student, autoencoder=autoencoder, rates=rates, skipped=skipped)


def _train_config(base: TrainConfig, objective: str, steps: int, seconds_per_step: float) -> TrainConfig:
    every = max(1, round(CHECKPOINT_EVERY_S / seconds_per_step))
    return replace(base, objective=objective, steps=steps, warmup_steps=min(base.warmup_steps, max(1, steps // 20)),
                   ema_decay=ema_for(steps, base.ema_decay), checkpoint_every=every if every < steps else 0)


def _training_note(stage: str, steps: int, chosen: Preset) -> str:
    what = {"autoencoder": "the person's autoencoder", "teacher": "flow-matching teacher",
            "student": "1-2 step consistency student", "baseline": "1-step regression baseline"}[stage]
    return f"{steps} steps × batch {chosen.train.batch_size}: {what}"


def replan(current: Plan, remaining_s: float) -> Plan:
    """The plan with its not-yet-run training stages' steps scaled so they fit in ``remaining_s`` (called once
    enrollment is done, when its real time is known; the estimates of eval and export stay)."""
    training = [stage for stage in current.stages if stage.name in TRAINING_STAGES]
    others_s = sum(stage.estimate_s for stage in current.stages
                   if stage.name not in TRAINING_STAGES and stage.name != "enroll")
    planned_s = sum(stage.estimate_s - STAGE_OVERHEAD_S for stage in training)
    available_s = SAFETY * remaining_s - others_s - STAGE_OVERHEAD_S * len(training)
    scale = max(0.0, available_s) / planned_s if planned_s > 0 else 1.0
    counts = {stage.name: max(MIN_STEPS[stage.name], int(stage.steps * scale)) for stage in training}
    rates = current.rates
    chosen = preset(current.size)
    base = replace(chosen.train, threads=current.teacher.threads, device=current.teacher.device)
    stages = tuple(StagePlan(stage.name, counts[stage.name],
                             counts[stage.name] * rates.seconds_per_step(stage.name) + STAGE_OVERHEAD_S,
                             _training_note(stage.name, counts[stage.name], chosen))
                   if stage.name in counts else stage for stage in current.stages)
    teacher = _train_config(base, "flow", counts["teacher"], rates.teacher_s)
    baseline = (_train_config(base, "regression", counts["baseline"], rates.baseline_s)
                if current.baseline is not None else None)
    student = current.student
    if student is not None:
        preset_distill = DISTILL_PRESETS.get(current.size, DistillConfig())
        student = replace(student, steps=counts["student"],
                          ema_decay=ema_for(counts["student"], preset_distill.ema_decay))
    autoencoder = (replace(base, autoencoder_steps=counts["autoencoder"])
                   if current.autoencoder is not None else None)
    return replace(current, stages=stages, teacher=teacher, baseline=baseline, student=student,
                   autoencoder=autoencoder)


def format_duration(seconds: float) -> str:
    """``754`` → ``12m34s``; ``45`` → ``45s``; ``3720`` → ``1h02m``."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1.5h``, ``1h30m`` → seconds.

    Raises:
        InputError: not a positive duration with units.
    """
    import re

    cleaned = text.strip().lower().replace(" ", "")
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", cleaned)
    if not cleaned or match is None:
        raise InputError(f"duration {text!r} must have units, like 90s, 15m, 1.5h or 1h30m")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise InputError(f"duration {text!r} must be longer than zero")
    return total


def resolved_device(name: str) -> str:
    """``auto`` → ``cuda`` or ``cpu``, as training will pick it."""
    return str(pick_device(name))
