"""The schedule for a time budget: steps from measured speeds, fixed costs first, shares of what is left; and the
run's progress and ETA over all stages (unit tier: made-up speeds, no training)."""

from __future__ import annotations

import pytest

from model.schedule import (
    SAFETY,
    FixedCosts,
    Plan,
    Rates,
    ema_for,
    format_duration,
    parse_duration,
    plan,
    replan,
)
from twincast.errors import InputError
from twincast.progress import Tracker

RATES = Rates(teacher_s=0.5, student_s=1.2, baseline_s=0.4, autoencoder_s=None, render_step_ms=5.0,
              render_step_ms_batch1=8.0)
LATENT_RATES = Rates(teacher_s=0.2, student_s=0.25, baseline_s=0.22, autoencoder_s=0.1, render_step_ms=2.0,
                     render_step_ms_batch1=4.0)
FIXED = FixedCosts(enroll_s=60.0, frame_count=1131, holdout_frames=125, face_ms_per_frame=10.0)


def test_the_plan_fits_the_budget_and_the_teacher_gets_what_is_left() -> None:
    chosen = plan("demo", 900.0, FIXED, RATES, overhead_s=10.0)
    names = [stage.name for stage in chosen.stages]
    assert names == ["enroll", "teacher", "eval", "export"]  # the demo size: the teacher alone (measured best)
    assert chosen.estimate_s + 10.0 <= SAFETY * 900.0 + 1.0
    teacher = chosen.stage("teacher")
    assert teacher.steps == chosen.teacher.steps > 1000
    assert chosen.teacher.checkpoint_every == 60  # 30 s of steps at 0.5 s each: a crash loses at most that
    assert chosen.teacher.warmup_steps == teacher.steps // 20  # a twentieth of a short run, at most the preset's
    assert chosen.teacher.ema_decay == pytest.approx(1 - 5 / teacher.steps)  # a horizon of a fifth of the run


def test_twice_the_budget_gives_the_training_twice_the_time() -> None:
    short = plan("demo", 900.0, FIXED, RATES)
    long = plan("demo", 1800.0, FIXED, RATES)
    fixed = sum(stage.estimate_s for stage in short.stages if stage.name != "teacher")
    assert long.stage("teacher").steps == pytest.approx(
        short.stage("teacher").steps * (SAFETY * 1800 - fixed) / (SAFETY * 900 - fixed), rel=0.02)


def test_shares_split_the_training_time_and_a_stage_too_short_to_matter_is_skipped() -> None:
    split = plan("demo", 1200.0, FIXED, RATES, shares={"teacher": 0.7, "student": 0.3})
    teacher_s = split.stage("teacher").steps * RATES.teacher_s
    student_s = split.stage("student").steps * RATES.student_s
    assert teacher_s / (teacher_s + student_s) == pytest.approx(0.7, abs=0.01)
    assert split.student is not None and split.student.steps == split.stage("student").steps
    tiny_share = plan("demo", 600.0, FIXED, RATES, shares={"teacher": 0.99, "student": 0.01})
    assert "student" in tiny_share.skipped and "student" not in [stage.name for stage in tiny_share.stages]
    assert tiny_share.student is None


def test_a_latent_size_trains_its_autoencoder_first() -> None:
    chosen = plan("base", 600.0, FIXED, LATENT_RATES)
    assert [stage.name for stage in chosen.stages][:3] == ["enroll", "autoencoder", "teacher"]
    assert chosen.autoencoder is not None and chosen.autoencoder.autoencoder_steps == chosen.stage("autoencoder").steps
    with pytest.raises(InputError, match="autoencoder share"):
        plan("base", 600.0, FIXED, LATENT_RATES, shares={"teacher": 1.0})


def test_a_budget_too_short_is_refused_with_the_budget_that_would_do() -> None:
    with pytest.raises(InputError, match=r"too short .* give --budget (\d+m\d+s|\d+s) or more") as error:
        plan("demo", 90.0, FIXED, RATES)
    suggested = str(error.value).split("--budget ")[1].split(" ")[0]
    plan("demo", parse_duration(suggested), FIXED, RATES)  # and the budget it names does fit


def test_replanning_after_a_slow_enrollment_scales_the_training_down() -> None:
    chosen = plan("demo", 900.0, FIXED, RATES, shares={"teacher": 0.8, "student": 0.2})
    later = replan(chosen, 700.0)
    for name in ("teacher", "student"):
        assert later.stage(name).steps < chosen.stage(name).steps
    ratio = later.stage("teacher").steps / chosen.stage("teacher").steps
    assert ratio == pytest.approx(later.stage("student").steps / chosen.stage("student").steps, abs=0.01)
    assert later.teacher.steps == later.stage("teacher").steps
    assert Plan.from_dict(later.to_dict()) == later  # what create.json keeps reads back the same


def test_the_ema_horizon_is_at_most_a_fifth_of_the_run() -> None:
    assert ema_for(6000, 0.999) == 0.999
    assert ema_for(1000, 0.999) == pytest.approx(0.995)
    assert ema_for(100, 0.0) == 0.0


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1.5h", 5400), ("1h30m", 5400),
                                               ("2m30s", 150)])
def test_durations_read_with_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "", "m", "-5m", "0s", "fifteen minutes"])
def test_a_duration_without_units_is_refused(text: str) -> None:
    with pytest.raises(InputError, match="duration"):
        parse_duration(text)


def test_durations_are_written_short() -> None:
    assert [format_duration(s) for s in (0, 45, 754, 3720)] == ["0s", "45s", "12m34s", "1h02m"]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_weighs_stages_by_their_estimates_and_the_eta_follows_the_real_speed() -> None:
    chosen = plan("demo", 900.0, FIXED, RATES)
    clock = FakeClock()
    tracker = Tracker(chosen, clock)
    estimates = {stage.name: stage.estimate_s for stage in chosen.stages}
    total = sum(estimates.values())
    tracker.start("enroll")
    assert tracker.eta_s == pytest.approx(total)
    tracker.start("teacher")
    clock.t = 100.0
    tracker.advance(0.25)  # a quarter of the teacher in 100 s: it goes at 400 s per teacher
    assert tracker.progress == pytest.approx((estimates["enroll"] + 0.25 * estimates["teacher"]) / total)
    assert tracker.eta_s == pytest.approx(300.0 + estimates["eval"] + estimates["export"])
    tracker.start("export")
    tracker.advance(1.0)
    assert tracker.progress == pytest.approx(1.0) and tracker.eta_s == pytest.approx(0.0)
