"""A session's script: the lines a producer prepared, in an order they can change, spoken on cue.

"Speak next" queues a line after whatever is being said; "speak now" interrupts and says it at once. Lines stay
in the script once spoken (marked, with the time), so the producer sees what was covered.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from avatar.speech import MAX_TEXT_CHARS
from twincast.errors import InputError, NotFoundError, PayloadTooLargeError

MAX_LINES = 500


@dataclass
class ScriptLine:
    """One line of the script."""

    line_id: int
    text: str
    spoken_at: float | None = None
    times_spoken: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class Script:
    """An ordered, editable list of lines."""

    lines: list[ScriptLine] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, texts: list[str]) -> list[ScriptLine]:
        """Append lines (blank ones are skipped).

        Raises:
            InputError: a line is too long, or there is nothing to add.
            PayloadTooLargeError: the script would exceed ``MAX_LINES``.
        """
        cleaned = [text.strip() for text in texts if text.strip()]
        if not cleaned:
            raise InputError("no lines to add; expected at least one non-blank line")
        for text in cleaned:
            if len(text) > MAX_TEXT_CHARS:
                raise InputError(f"a line has {len(text)} characters; at most {MAX_TEXT_CHARS} are accepted")
        if len(self.lines) + len(cleaned) > MAX_LINES:
            raise PayloadTooLargeError(f"the script holds at most {MAX_LINES} lines")
        added = [ScriptLine(next(self._ids), text) for text in cleaned]
        self.lines.extend(added)
        return added

    def line(self, line_id: int) -> ScriptLine:
        """A line by id.

        Raises:
            NotFoundError: no such line.
        """
        for line in self.lines:
            if line.line_id == line_id:
                return line
        raise NotFoundError(f"no script line {line_id}")

    def remove(self, line_id: int) -> None:
        """Delete a line."""
        self.lines.remove(self.line(line_id))

    def reorder(self, order: list[int]) -> None:
        """Put the lines in the order of ``order``, which must name every line exactly once.

        Raises:
            InputError: ``order`` is not a permutation of the script's ids.
        """
        current = {line.line_id: line for line in self.lines}
        if sorted(order) != sorted(current):
            raise InputError(f"order must list every line id exactly once: {sorted(current)}")
        self.lines = [current[line_id] for line_id in order]

    def mark_spoken(self, line_id: int) -> ScriptLine:
        """Record that a line was cued."""
        line = self.line(line_id)
        line.spoken_at = time.time()
        line.times_spoken += 1
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"lines": [line.to_dict() for line in self.lines]}
