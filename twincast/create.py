"""``twincast create``: from a video to a live twin in one command, within a time budget.

The stages, into one twin directory: enroll (``pack/``, its report and contact sheet) → the person's autoencoder
(latent sizes) → the flow-matching teacher → the consistency student and the regression baseline (when the plan
gives them time) → eval of every variant (``eval.json``, ``eval.mp4``) → export of the variant that scored best
among those that render in 1-2 steps (``twin.onnx`` + ``twin.json``). The schedule comes from the budget and
speeds measured here (``model.schedule``), and is printed with its estimate before anything starts.

Resumable: ``create.json`` in the twin directory records the plan and each stage as it finishes; the same
command again continues where a crash or Ctrl-C stopped it (a stage half done starts again, except the teacher
and the baseline, which continue from their last resumable checkpoint, at most ``CHECKPOINT_EVERY_S`` back).
A lock file keeps two runs out of one directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from avatar.enroll import EnrollConfig
from model.loop import StepReport
from model.schedule import STAGES, FixedCosts, Plan, format_duration, plan, replan
from twincast.errors import InputError
from twincast.files import atomic_write_bytes, sha256_file
from twincast.progress import Event, Reporter, Tracker

STATE_FILE = "create.json"
LOCK_FILE = ".create.lock"
SERVER_JOB_FILES = ("job.json", "create.log")  # a server's job (stream.jobs) keeps its state and log beside the video
STATE_VERSION = 1
SIZES = ("tiny", "tiny-latent", "demo", "base")  # tiny and tiny-latent: for tests, in seconds
LIVE_VARIANTS = ("student_1", "student_2", "teacher_2", "baseline_1")  # render live: 1-2 sampler steps
PREVIEW_FILE = "preview.png"
PREVIEW_FRAMES = 4
MAX_MESSAGES = 50
NAME_PATTERN = r"^[A-Za-z0-9_\-]{1,40}$"


@dataclass(frozen=True)
class CreateOptions:
    """What to make: the video, the twin's name and directory, its size, the time budget and the device."""

    video: Path
    name: str
    out: Path
    size: str = "demo"
    budget_s: float = 900.0
    device: str = "auto"
    threads: int = 0  # 0: measure one thread and all cores, take the faster
    preview_every_s: float = 120.0
    force: bool = False
    enroll: EnrollConfig = field(default_factory=EnrollConfig)
    prior: Path | None = None  # the prior the teacher starts from (default: the one shipped for the size, if any)
    from_scratch: bool = False  # start the teacher from random weights even when a prior ships

    def __post_init__(self) -> None:
        import re

        if not re.match(NAME_PATTERN, self.name):
            raise InputError(f"twin name {self.name!r} must be 1-40 letters, digits, '-' or '_'")
        if self.size not in SIZES:
            raise InputError(f"--size {self.size!r} must be one of {', '.join(SIZES)}")
        if not 1.0 <= self.budget_s <= 7 * 86400:
            raise InputError(f"--budget {format_duration(self.budget_s)} must be between 1 s and a week")
        if self.threads < 0:
            raise InputError(f"--threads {self.threads} must be ≥ 0 (0: measure and pick)")
        if self.preview_every_s <= 0:
            raise InputError(f"preview_every_s {self.preview_every_s} must be positive")


@dataclass(frozen=True)
class CreateResult:
    """A finished twin: its directory, the variant that went live, its figures and how long it all took."""

    out: Path
    name: str
    live_variant: str
    figures: dict[str, Any]
    seconds: float
    estimate_s: float
    resumed: bool


class TwinState:
    """``create.json``: the run's plan and each stage's state, rewritten atomically as the run goes."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def load(cls, out: Path) -> TwinState | None:
        """The state in ``out``, or None when there is none.

        Raises:
            InputError: the file is not a state this version wrote.
        """
        path = out / STATE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} is not readable JSON ({exc}); pass --force to start this twin again") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise InputError(f"{path} was not written by this version of twincast create; pass --force")
        return cls(path, data)

    def save(self) -> None:
        """Write the state (through a temporary file and a rename)."""
        atomic_write_bytes(self.path, json.dumps(self.data, indent=1).encode())

    @property
    def plan(self) -> Plan:
        """The plan being run."""
        return Plan.from_dict(self.data["plan"])

    def stage_done(self, stage: str) -> bool:
        """Whether ``stage`` finished in an earlier or this run."""
        return bool(self.data["stages"].get(stage, {}).get("state") == "done")

    def mark(self, stage: str, state: str, **fields: Any) -> None:
        """Record ``stage`` as ``state`` (running, done) with ``fields``, and save."""
        self.data["stages"][stage] = {**self.data["stages"].get(stage, {}), "state": state, **fields}
        self.save()

    def note(self, text: str) -> None:
        """Keep a message (the last ``MAX_MESSAGES``)."""
        self.data["messages"] = [*self.data.get("messages", []), {"at": round(time.time(), 3), "text": text}][
            -MAX_MESSAGES:]


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the twin directory's lock for the block.

    Raises:
        InputError: another ``twincast create`` holds it.
    """
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(f"{out} is being made by another twincast create ({holder}); wait for it, or "
                             "stop it first") from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create(options: CreateOptions, reporter: Reporter) -> CreateResult:
    """Make the twin ``options`` describe (or finish making it), telling ``reporter`` as it goes.

    Raises:
        NotFoundError, InputError, UnprocessableError: the video is unusable (said before anything is built), the
            directory holds something else, or the budget is too short.
    """
    started = time.monotonic()
    with locked(options.out):
        state, resumed = _prepare(options, reporter)
        builder = _Builder(options, state, reporter)
        try:
            result = builder.run()
        except KeyboardInterrupt:
            state.data["state"] = "interrupted"
            state.save()
            reporter.emit(Event("error", {"state": "interrupted", "stage": builder.tracker.stage,
                                          "text": f"interrupted at {builder.tracker.stage}: run the same command "
                                                  "again to continue from there"}))
            raise
        except Exception as exc:
            state.data["state"] = "failed"
            state.data["error"] = str(exc)
            state.save()
            reporter.emit(Event("error", {"state": "failed", "stage": builder.tracker.stage, "message": str(exc),
                                          "text": f"failed at {builder.tracker.stage}: {exc}"}))
            raise
    result = replace(result, seconds=time.monotonic() - started, resumed=resumed)
    reporter.emit(Event("done", {**summary_fields(result), "text": summary_text(result)}))
    return result


def _prepare(options: CreateOptions, reporter: Reporter) -> tuple[TwinState, bool]:
    """The state to run: the directory's own when it holds this twin unfinished, else a new plan (made after
    the footage has been looked at and this machine's speeds measured)."""
    existing = None if options.force else TwinState.load(options.out)
    if existing is not None:
        _check_same_twin(existing, options)
        existing.data["state"] = "running"
        existing.data.pop("error", None)
        existing.save()
        done = [stage for stage in STAGES if existing.stage_done(stage)]
        reporter.emit(Event("plan", {"plan": existing.data["plan"], "resumed": True, "text": plan_text(
            existing.plan, options.name, resumed_after=done[-1] if done else "nothing")}))
        return existing, True
    from model.prior_card import choose_prior

    prior, prior_text = choose_prior(options.size, prior=options.prior, from_scratch=options.from_scratch)
    _clear(options)
    planning_started = time.monotonic()
    from avatar.enroll import holdout_block
    from avatar.preflight import check_footage
    from model.config import preset
    from model.schedule import measure_rates, pick_threads, resolved_device

    checked = check_footage(options.video, options.enroll)
    chosen = preset(options.size)
    device = resolved_device(options.device)
    threads, timings = (options.threads, {}) if options.threads else pick_threads(chosen, device)
    rates = measure_rates(chosen, device, threads)
    start, end = holdout_block(checked.frame_count, options.enroll)
    fixed = FixedCosts(enroll_s=checked.enroll_estimate_s, frame_count=checked.frame_count,
                       holdout_frames=end - start, face_ms_per_frame=checked.first_pass_ms_per_frame)
    planning_s = time.monotonic() - planning_started
    chosen_plan = plan(options.size, options.budget_s, fixed, rates, device=device, threads=threads,
                       overhead_s=planning_s)
    state = TwinState(options.out / STATE_FILE, {
        "version": STATE_VERSION, "name": options.name, "size": options.size, "budget_s": options.budget_s,
        "video": {"path": str(options.video.resolve()), "name": options.video.name,
                  "sha256": sha256_file(options.video)},
        "state": "running", "started_at": round(time.time(), 3), "planning_s": round(planning_s, 2),
        "threads_measured": {str(count): round(seconds, 4) for count, seconds in timings.items()},
        "plan": chosen_plan.to_dict(), "stages": {}, "messages": [],
        "prior": {"path": None if prior is None else str(prior.resolve()), "text": prior_text},
    })
    state.note(f"teacher: {prior_text}")
    for warning in checked.warnings:
        state.note(f"note: {warning}")
    state.save()
    reporter.emit(Event("plan", {"plan": chosen_plan.to_dict(), "resumed": False,
                                 "text": plan_text(chosen_plan, options.name, threads_measured=timings)}))
    reporter.emit(Event("message", {"text": f"teacher: {prior_text}"}))
    for warning in checked.warnings:
        reporter.emit(Event("message", {"text": f"note: {warning}"}))
    return state, False


def _check_same_twin(state: TwinState, options: CreateOptions) -> None:
    """Refuse to resume a directory that holds another video's twin, or another size of it."""
    if state.data["state"] == "done":
        return
    if state.data["size"] != options.size:
        raise InputError(f"{options.out} holds an unfinished {state.data['size']} twin, not {options.size}; run it "
                         f"with --size {state.data['size']} to finish it, or pass --force to start again")
    if sha256_file(options.video) != state.data["video"]["sha256"]:
        raise InputError(f"{options.out} holds the twin of another video ({state.data['video']['name']}); choose "
                         "another --out, or pass --force to start again from this one")


def _clear(options: CreateOptions) -> None:
    """Make room for a new twin: the directory may hold nothing but the video itself (with the lock, and a server
    job's state and log beside it), unless ``force`` says to remove what is there.

    Raises:
        InputError: it holds other files and ``force`` is false; or ``force`` would delete the video.
    """
    video = options.video.resolve()
    keep = {LOCK_FILE, *SERVER_JOB_FILES, video.name} if video.parent == options.out.resolve() else {LOCK_FILE}
    others = [path for path in options.out.iterdir() if path.name not in keep]
    if not others:
        return
    if not options.force:
        raise InputError(f"{options.out} exists and holds other files ({', '.join(p.name for p in others[:3])}); "
                         "choose another --out, or pass --force to replace them")
    for path in others:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class _Builder:
    """Runs the plan's stages that are not done yet, recording each in the state and telling the reporter."""

    def __init__(self, options: CreateOptions, state: TwinState, reporter: Reporter) -> None:
        from model.config import preset

        self.options = options
        self.state = state
        self.reporter = reporter
        self.plan = state.plan
        self.tracker = Tracker(self.plan)
        self.out = options.out
        self.pack = self.out / "pack"
        self.run_dir = self.out / "run"
        self.preset = preset(self.plan.size)
        self._last_preview = time.monotonic()
        self._started = time.monotonic()
        self._holdout: Any = None

    def run(self) -> CreateResult:
        """Every stage not done yet, in order; returns the finished twin."""
        for name in STAGES:
            if name not in {stage.name for stage in self.plan.stages} or self.state.stage_done(name):
                continue
            stage = self.plan.stage(name)
            self.tracker.start(name)
            self.state.data["current"] = name
            self.state.mark(name, "running", started_at=round(time.time(), 3))
            self.reporter.emit(Event("stage", {"stage": name, "text": f"{name}: {stage.note}"}))
            started = time.monotonic()
            details = getattr(self, f"_{name}")()
            seconds = time.monotonic() - started
            self.state.mark(name, "done", seconds=round(seconds, 2), **details)
            self._progress(1.0)
            if name == "enroll":
                self._replan()
        self.state.data.update(state="done", finished_at=round(time.time(), 3), current=None)
        self.state.save()
        figures = self.state.data["stages"]["eval"]["live"]
        return CreateResult(out=self.out, name=self.state.data["name"], live_variant=figures["variant"],
                            figures=figures, seconds=time.monotonic() - self._started, estimate_s=self.plan.estimate_s,
                            resumed=False)

    # --- progress ----------------------------------------------------------------------------------------------

    def _progress(self, fraction: float, **fields: Any) -> None:
        self.tracker.advance(fraction)
        self.reporter.emit(Event("progress", {"stage": self.tracker.stage, "fraction": round(fraction, 4),
                                              "progress": round(self.tracker.progress, 4),
                                              "eta_s": round(self.tracker.eta_s, 1), **fields}))

    def _message(self, text: str) -> None:
        self.state.note(text)
        self.state.save()
        self.reporter.emit(Event("message", {"text": text}))

    def _on_step(self, report: StepReport) -> None:
        self._progress(report.step / report.steps, step=report.step, steps=report.steps,
                       loss=round(report.loss, 5) if report.loss == report.loss else None)
        due = time.monotonic() - self._last_preview >= self.options.preview_every_s
        if due and report.role != "autoencoder":
            self._preview(report)

    def _preview(self, report: StepReport) -> None:
        """Render a few holdout frames with the weights as they are now: truth above, render below."""
        import cv2
        import numpy as np

        from avatar.pack import AvatarPack
        from model.eval import EvalInputs, load_holdout, render

        if self._holdout is None:
            inputs = load_holdout(AvatarPack.load(self.pack))
            picks = np.linspace(0, len(inputs.indices) - 1, PREVIEW_FRAMES).round().astype(int)
            self._holdout = EvalInputs(inputs.indices[picks], inputs.truth[picks], inputs.masked[picks],
                                       inputs.reference, inputs.mel[picks], inputs.audio)
        rendered = render(report.network, self._holdout, steps=2)  # type: ignore[arg-type]
        sheet = np.concatenate([np.concatenate(list(self._holdout.truth), axis=1),
                                np.concatenate(list(rendered), axis=1)], axis=0)
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError("OpenCV could not encode the preview")
        atomic_write_bytes(self.out / PREVIEW_FILE, encoded.tobytes())
        self._last_preview = time.monotonic()
        self.state.data["preview"] = {"stage": report.role, "step": report.step, "at": round(time.time(), 3)}
        self.state.save()
        self.reporter.emit(Event("preview", {"stage": report.role, "step": report.step,
                                             "path": str(self.out / PREVIEW_FILE),
                                             "text": f"preview at {report.role} step {report.step}: "
                                                     f"{self.out / PREVIEW_FILE}"}))

    def _replan(self) -> None:
        """Once enrollment's real time is known, fit the training stages into what is left of the budget."""
        spent = float(self.state.data.get("planning_s", 0.0)) + float(self.state.data["stages"]["enroll"]["seconds"])
        before = {stage.name: stage.steps for stage in self.plan.stages}
        self.plan = replan(self.plan, self.plan.budget_s - spent)
        self.tracker = Tracker(self.plan)
        self.tracker.start("enroll")
        self.tracker.advance(1.0)
        self.state.data["plan"] = self.plan.to_dict()
        changed = [f"{stage.name} {before[stage.name]} → {stage.steps} steps" for stage in self.plan.stages
                   if stage.steps != before[stage.name]]
        if changed:
            self._message(f"enrollment took {format_duration(self.state.data['stages']['enroll']['seconds'])}: "
                          f"{', '.join(changed)} to keep to the budget")
        self.state.save()

    # --- the stages ----------------------------------------------------------------------------------------------

    def _model_config(self) -> Any:
        from avatar.pack import AvatarPack
        from model.config import preset

        meta = AvatarPack.load(self.pack).meta
        return preset(self.plan.size, crop_px=meta.crop_px, mask_top=meta.mask_top).model

    def _enroll(self) -> dict[str, Any]:
        from avatar.enroll import CONTACT_SHEET, enroll

        config = replace(self.options.enroll, crop_px=self.preset.model.crop_px)
        result = enroll(self.options.video, self.pack, config, force=True, progress=False, write_report=True,
                        on_progress=self._progress)
        shutil.copyfile(self.pack / CONTACT_SHEET, self.out / CONTACT_SHEET)
        report = result.report
        self._message(f"enrolled {result.frame_count} frames: {report['usable_s']:.1f} s usable, "
                      f"{report['trainable_s']:.1f} s to learn from, holdout frames {result.holdout[0]}-"
                      f"{result.holdout[1]}")
        return {"frames": result.frame_count, "usable_s": report["usable_s"], "trainable_s": report["trainable_s"],
                "holdout": list(result.holdout)}

    def _autoencoder(self) -> dict[str, Any]:
        from model.autoencoder import train_autoencoder
        from model.prior_card import read_card

        assert self.plan.autoencoder is not None
        prior = (self.state.data.get("prior") or {}).get("path")
        init_from = Path(prior) if prior and "autoencoder" in read_card(Path(prior)) else None
        if init_from is not None:
            self._message(f"autoencoder: the prior's encoder and latent space, its decoder tuned to this person "
                          f"({prior})")
        result = train_autoencoder(self.pack, self.run_dir, self._model_config(), self.plan.autoencoder, force=True,
                                   progress=False, on_step=self._on_step, init_from=init_from)
        self._message(f"autoencoder: holdout reconstructed at {result.holdout_psnr_mouth:.1f} dB (mouth)")
        return {"steps": result.steps, "final_loss": round(result.final_loss, 5),
                "holdout_psnr_mouth": round(result.holdout_psnr_mouth, 2),
                "init_from": None if init_from is None else str(init_from)}

    def _train(self, config: Any) -> dict[str, Any]:
        from model.checkpoint import resume_file
        from model.train import role_of, train

        role = role_of(config)
        resuming = (self.run_dir / resume_file(role)).is_file()
        if resuming:
            self._message(f"{role}: continuing from its last resumable checkpoint")
        prior = self.state.data.get("prior") or {}
        init_from = Path(prior["path"]) if role == "teacher" and prior.get("path") else None
        if role == "teacher" and not resuming:
            self._message(f"teacher: {prior.get('text', 'from scratch')}")
        result = train(self.pack, self.run_dir, self._model_config(), config, force=not resuming, resume=resuming,
                       progress=False, on_step=self._on_step, init_from=init_from)
        return {"steps": result.steps, "final_loss": round(result.final_loss, 5),
                "init_from": None if init_from is None else str(init_from)}

    def _teacher(self) -> dict[str, Any]:
        return self._train(self.plan.teacher)

    def _baseline(self) -> dict[str, Any]:
        return self._train(self.plan.baseline)

    def _student(self) -> dict[str, Any]:
        from model.distill import distill

        assert self.plan.student is not None
        result = distill(self.run_dir, self.plan.student, pack_path=self.pack, force=True, progress=False,
                         on_step=self._on_step)
        return {"steps": result.steps, "final_loss": round(result.final_loss, 5)}

    def _eval(self) -> dict[str, Any]:
        from model.eval import evaluate

        report = evaluate(self.run_dir, pack_path=self.pack, video=True, progress=False, on_progress=self._progress,
                          threads=self.plan.teacher.threads)
        live = best_live_variant(report["variants"])
        os.replace(self.run_dir / "eval.mp4", self.out / "eval.mp4")
        report["video"] = str(self.out / "eval.mp4")
        report["live_variant"] = live
        atomic_write_bytes(self.out / "eval.json", json.dumps(report, indent=1).encode())
        row = report["variants"][live]
        for name, figures in report["variants"].items():
            self._message(f"eval {name}: mouth {figures['psnr_mouth']:.2f} dB, face {figures['psnr_face']:.2f} dB, "
                          f"lip sync {_figure(figures['sync_corr_pixels'])}")
        return {"live": {"variant": live, **{key: row[key] for key in (
            "psnr_mouth", "ssim_mouth", "psnr_face", "sync_corr_pixels", "sync_corr")}}}

    def _export(self) -> dict[str, Any]:
        from export.onnx_export import export_run
        from model.eval import VARIANTS

        live = self.state.data["stages"]["eval"]["live"]["variant"]
        role, steps = VARIANTS[live]
        self._progress(0.1)
        result = export_run(self.run_dir, self.out / "twin.onnx", steps=steps, variant=role)
        self._message(f"exported {live} ({role}, {steps} step{'s' if steps > 1 else ''}): {result.onnx}")
        return {"variant": live, "onnx": str(result.onnx), "max_abs_error": result.max_abs_error}


def best_live_variant(variants: dict[str, dict[str, Any]]) -> str:
    """The variant to serve: the best mouth PSNR among those that render in 1-2 sampler steps (on a tie, the
    one listed first in ``LIVE_VARIANTS``: fewer steps)."""
    candidates = [name for name in LIVE_VARIANTS if name in variants and variants[name]["psnr_mouth"] is not None]
    if not candidates:
        raise InputError(f"no variant that renders live was evaluated (got {sorted(variants)})")
    return max(candidates, key=lambda name: (variants[name]["psnr_mouth"], -LIVE_VARIANTS.index(name)))


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- text ------------------------------------------------------------------------------------------------------

def plan_text(chosen: Plan, name: str, *, resumed_after: str | None = None,
              threads_measured: dict[int, float] | None = None) -> str:
    """The plan as a person reads it: what each stage does, its estimate, the total against the budget."""
    threads = chosen.teacher.threads
    where = chosen.device if chosen.device != "cpu" else f"cpu, {threads or os.cpu_count()} thread(s)"
    lines = [f"twincast create {name}: {chosen.size} size on {where}, budget {format_duration(chosen.budget_s)}"]
    if resumed_after is not None:
        lines[0] += f" — resuming the stored plan after {resumed_after}"
    rates = chosen.rates
    measured = [f"teacher {rates.teacher_s:.3f} s/step"]
    if "student" in {s.name for s in chosen.stages}:
        measured.append(f"student {rates.student_s:.3f} s/step")
    if "baseline" in {s.name for s in chosen.stages}:
        measured.append(f"baseline {rates.baseline_s:.3f} s/step")
    if rates.autoencoder_s is not None:
        measured.append(f"autoencoder {rates.autoencoder_s:.3f} s/step")
    if threads_measured and len(threads_measured) > 1:
        measured.append("teacher with " + " vs ".join(f"{count} thread(s) {seconds:.3f} s"
                                                     for count, seconds in threads_measured.items()))
    lines.append("  measured here: " + ", ".join(measured))
    for stage in chosen.stages:
        lines.append(f"  {stage.name:<12} {stage.note:<58} ~ {format_duration(stage.estimate_s):>6}")
    for skipped, why in chosen.skipped.items():
        lines.append(f"  not run: {skipped} ({why})")
    lines.append(f"  estimated {format_duration(chosen.estimate_s)} of the {format_duration(chosen.budget_s)} budget")
    return "\n".join(lines)


def summary_fields(result: CreateResult) -> dict[str, Any]:
    """The result as JSON-ready fields."""
    return {"name": result.name, "out": str(result.out), "live_variant": result.live_variant,
            "figures": result.figures, "seconds": round(result.seconds, 1), "estimate_s": round(result.estimate_s, 1),
            "resumed": result.resumed, "serve": serve_command(result)}


def serve_command(result: CreateResult) -> str:
    """The command that serves the twin."""
    return f"twincast serve --twin {result.name}={result.out}"


def summary_text(result: CreateResult) -> str:
    """The result as a person reads it: the twin, its figures, the files, and how to serve it."""
    figures = result.figures
    out = result.out
    return "\n".join([
        f"twin {result.name} ready in {format_duration(result.seconds)} (planned {format_duration(result.estimate_s)}"
        f"{', resumed' if result.resumed else ''}): {out}",
        f"  live: {result.live_variant} — mouth {figures['psnr_mouth']:.2f} dB PSNR, SSIM {figures['ssim_mouth']:.3f}; "
        f"face {figures['psnr_face']:.2f} dB; lip sync {_figure(figures['sync_corr_pixels'])} (mouth pixels), "
        f"{_figure(figures['sync_corr'])} (landmarks)",
        f"  eval: {out / 'eval.json'} · side by side: {out / 'eval.mp4'} · contact sheet: {out / 'contact_sheet.png'}",
        f"serve it: {serve_command(result)}",
    ])


def become_background_worker() -> None:
    """Make this process a server's training worker: the lowest CPU priority (``SCHED_IDLE`` where Linux has it,
    else nice 19), so training only gets what the live render loop leaves; SIGTERM stops it as Ctrl-C would (the
    twin stays resumable); and it gets SIGTERM when the process that started it dies, so no training outlives
    its server. Call it first, before threads are started: they inherit the priority."""
    import ctypes
    import signal

    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    os.nice(19 - os.nice(0))

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took hold
        raise KeyboardInterrupt
