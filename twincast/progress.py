"""How ``twincast create`` tells its progress: one bar with ETA over all stages (a person at a terminal), JSON
lines on stdout (the server's training worker reads them), or nothing but the plan and the result.

Every reporter gets the same events (``Event``); the ``Tracker`` turns a stage's own progress into the progress
and ETA of the whole run, from the plan's estimates corrected by how fast the current stage really goes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TextIO

from tqdm import tqdm

from model.schedule import Plan, format_duration

EventType = Literal["plan", "stage", "progress", "message", "preview", "done", "error"]
JSON_EVERY_S = 0.5  # progress lines at most this often (stage changes, messages and previews always)


@dataclass(frozen=True)
class Event:
    """One thing to tell: its type and its JSON-ready fields."""

    type: EventType
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """One line of JSON: ``{"type": …, …fields}``."""
        return json.dumps({"type": self.type, **self.fields}, separators=(",", ":"))


class Reporter(Protocol):
    """Where a run's events go."""

    def emit(self, event: Event) -> None:
        """Tell one event."""

    def close(self) -> None:
        """The run is over: finish what is on screen."""


class Tracker:
    """The whole run's progress and ETA from the stage in hand.

    Progress weighs each stage by its planned seconds. The ETA is the rest of the current stage at the speed it
    has gone so far (once 5 % of it is done; its plan before that), plus the later stages' plans.
    """

    def __init__(self, plan: Plan, clock: Any = time.monotonic) -> None:
        self.plan = plan
        self._clock = clock
        self._estimates = {stage.name: max(stage.estimate_s, 1e-3) for stage in plan.stages}
        self._total = sum(self._estimates.values())
        self.stage = plan.stages[0].name
        self.fraction = 0.0
        self._stage_started = clock()

    def start(self, stage: str) -> None:
        """``stage`` begins now."""
        self.stage = stage
        self.fraction = 0.0
        self._stage_started = self._clock()

    def advance(self, fraction: float) -> None:
        """The current stage is ``fraction`` done."""
        self.fraction = min(1.0, max(0.0, fraction))

    @property
    def progress(self) -> float:
        """The whole run's progress, 0..1."""
        names = list(self._estimates)
        done = sum(self._estimates[name] for name in names[: names.index(self.stage)])
        return min(1.0, (done + self.fraction * self._estimates[self.stage]) / self._total)

    @property
    def eta_s(self) -> float:
        """Seconds until the whole run is done, as things go."""
        names = list(self._estimates)
        later = sum(self._estimates[name] for name in names[names.index(self.stage) + 1:])
        estimate = self._estimates[self.stage]
        if self.fraction >= 0.05:
            elapsed = self._clock() - self._stage_started
            rest = elapsed * (1 - self.fraction) / self.fraction
        else:
            rest = estimate * (1 - self.fraction)
        return rest + later


class JsonLines:
    """Events as JSON lines on a stream (stdout), progress at most every ``JSON_EVERY_S``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._last_progress = 0.0

    def emit(self, event: Event) -> None:
        """Write the event as one line, flushed (a progress event only if the last is old enough)."""
        if event.type == "progress":
            now = time.monotonic()
            if now - self._last_progress < JSON_EVERY_S and event.fields.get("fraction", 0) < 1:
                return
            self._last_progress = now
        self._stream.write(event.to_json() + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Nothing to finish."""


class ProgressBar:
    """One bar over all stages on stderr: stage, its steps and loss, overall percent and ETA; messages above it."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout
        self._bar: Any = None

    def emit(self, event: Event) -> None:
        """Show the event: the plan and the result as text, progress on the bar, messages above it."""
        fields = event.fields
        if event.type == "plan":
            self._print(str(fields["text"]))
            self._bar = tqdm(total=1000, file=sys.stderr, bar_format="{desc} |{bar}| {percentage:3.0f}% {postfix}",
                             dynamic_ncols=True)
        elif event.type == "progress" and self._bar is not None:
            detail = f" {fields['step']}/{fields['steps']} steps" if fields.get("steps") else ""
            loss = f" loss {fields['loss']:.4f}" if fields.get("loss") is not None else ""
            self._bar.set_description_str(f"{fields['stage']}{detail}{loss}", refresh=False)
            self._bar.set_postfix_str(f"ETA {format_duration(fields['eta_s'])}", refresh=False)
            self._bar.n = int(1000 * fields["progress"])
            self._bar.refresh()
        elif event.type in ("message", "preview", "stage"):
            text = fields.get("text")
            if text:
                self._print(str(text))
        elif event.type in ("done", "error"):
            self.close()
            self._print(str(fields["text"]))

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.clear()
        print(text, file=self._out, flush=True)
        if self._bar is not None:
            self._bar.refresh()

    def close(self) -> None:
        """Take the bar off the screen."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class PlainText(ProgressBar):
    """The plan, messages and the result as text, without a bar (``--quiet``)."""

    def emit(self, event: Event) -> None:
        """Print what is text; progress is not shown."""
        if event.type != "progress" and event.fields.get("text"):
            print(str(event.fields["text"]), file=self._out, flush=True)
