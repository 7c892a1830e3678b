"""A run of show: the plan of a live-commerce broadcast, segment by segment — which product, the lines the twin
says about it, the elements on screen, how long it should take — and the library that keeps shows on disk.

A show is JSON (``SHOW_SCHEMA``, also in ``/api/openapi.json``): saved, loaded, exported and imported as is.
``parse_show`` checks every field and names the first one that is wrong; the library writes each show to a
temporary file renamed into place (``serve.commerce_dir``/shows/ID.json).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatar.speech import check_text
from stream.chat import check_webhook
from stream.openapi import check_json
from stream.overlays import KINDS
from twincast.errors import InputError, LimitError, NotFoundError, TwincastError
from twincast.files import atomic_write_bytes

MAX_SEGMENTS = 100
MAX_LINES_PER_SEGMENT = 100
MAX_LINE_CHARS = 1000
MAX_SHOWS = 200
SHOW_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
TEXT = {"type": "string", "maxLength": 200}
OFFER = {"type": "object", "additionalProperties": False, "properties": {
    "text": {"type": "string", "minLength": 1, "maxLength": 24, "description": "large on the badge: -30%, $59"},
    "detail": {"type": "string", "maxLength": 40, "description": "under it: today only"},
    "ends_in_s": {"type": ["number", "null"], "minimum": 1, "maximum": 86_400,
                  "description": "a countdown from when the segment starts"}}}
SEGMENT_SCHEMA = {"type": "object", "required": ["title"], "additionalProperties": False, "properties": {
    "title": {"type": "string", "minLength": 1, "maxLength": 80},
    "product": {"type": ["string", "null"], "maxLength": 40, "description": "a catalogue product id"},
    "lines": {"type": "array", "maxItems": MAX_LINES_PER_SEGMENT,
              "items": {"type": "string", "minLength": 1, "maxLength": MAX_LINE_CHARS}},
    "elements": {"type": "array", "maxItems": len(KINDS), "items": {"enum": list(KINDS)}},
    "offer": {**OFFER, "type": ["object", "null"]},
    "ticker": {"type": ["string", "null"], "maxLength": 200},
    "target_s": {"type": ["number", "null"], "minimum": 1, "maximum": 7200,
                 "description": "how long the segment should take"},
}}
SHOW_SCHEMA = {"type": "object", "required": ["name", "segments"], "additionalProperties": False, "properties": {
    "id": {"type": "string", "pattern": SHOW_ID.pattern},
    "name": {"type": "string", "minLength": 1, "maxLength": 80},
    "host": {"type": "object", "additionalProperties": False,
             "properties": {"name": {"type": "string", "maxLength": 60}, "title": {"type": "string", "maxLength": 80}}},
    "segments": {"type": "array", "maxItems": MAX_SEGMENTS, "items": SEGMENT_SCHEMA},
    "gap_s": {"type": "number", "minimum": 0, "maximum": 10, "description": "pause between lines"},
    "auto_answer": {"type": "boolean", "description": "answer matching viewer questions without a click"},
    "read_questions": {"type": "boolean", "description": "read a viewer's question aloud before its answer"},
    "agent_url": {"type": ["string", "null"], "maxLength": 500, "description": "agent webhook for questions"},
    "blocked_words": {"type": "array", "maxItems": 200, "items": {"type": "string", "minLength": 1, "maxLength": 40}},
    "saved_at": {"type": ["number", "null"]},
}}


@dataclass(frozen=True)
class Offer:
    """The badge of a segment: large text, a detail, and maybe a countdown from the segment's start."""

    text: str
    detail: str = ""
    ends_in_s: float | None = None


@dataclass(frozen=True)
class Segment:
    """One part of a show."""

    title: str
    product: str | None
    lines: tuple[str, ...]
    elements: tuple[str, ...]
    offer: Offer | None
    ticker: str | None
    target_s: float | None


@dataclass(frozen=True)
class Show:
    """A whole run of show (see ``SHOW_SCHEMA``)."""

    show_id: str
    name: str
    host_name: str
    host_title: str
    segments: tuple[Segment, ...]
    gap_s: float = 0.6
    auto_answer: bool = False
    read_questions: bool = False
    agent_url: str | None = None
    blocked_words: tuple[str, ...] = ()
    saved_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The show as JSON (what ``parse_show`` reads back)."""
        return {
            "id": self.show_id, "name": self.name, "host": {"name": self.host_name, "title": self.host_title},
            "segments": [{"title": s.title, "product": s.product, "lines": list(s.lines), "elements": list(s.elements),
                          "offer": None if s.offer is None else {"text": s.offer.text, "detail": s.offer.detail,
                                                                 "ends_in_s": s.offer.ends_in_s},
                          "ticker": s.ticker, "target_s": s.target_s} for s in self.segments],
            "gap_s": self.gap_s, "auto_answer": self.auto_answer, "read_questions": self.read_questions,
            "agent_url": self.agent_url, "blocked_words": list(self.blocked_words), "saved_at": self.saved_at,
        }


def parse_show(data: Any) -> Show:
    """Read a show from JSON, checking every field.

    Raises:
        InputError: the first field that is wrong, named (``segments[2].lines[0]``), with what was expected.
    """
    check_json(SHOW_SCHEMA, data, "show")
    segments = []
    for number, raw in enumerate(data["segments"]):
        where = f"segments[{number}]"
        lines = []
        for index, line in enumerate(raw.get("lines", [])):
            try:
                lines.append(check_text(line))
            except TwincastError as exc:
                raise InputError(f"{where}.lines[{index}]: {exc}") from exc
        elements = tuple(dict.fromkeys(raw.get("elements", [])))
        product = raw.get("product") or None
        if "card" in elements and product is None:
            raise InputError(f"{where} shows a card but names no product; give \"product\": a catalogue id")
        offer = raw.get("offer")
        if "badge" in elements and not offer and product is None:
            raise InputError(f"{where} shows a badge with nothing on it; give an \"offer\" or a \"product\"")
        segments.append(Segment(raw["title"].strip(), product, tuple(lines), elements,
                                Offer(offer["text"], offer.get("detail", ""), offer.get("ends_in_s"))
                                if offer and offer.get("text") else None,
                                raw.get("ticker") or None, raw.get("target_s")))
    if not segments:
        raise InputError("show needs at least one segment")
    host = data.get("host", {})
    agent_url = data.get("agent_url") or None
    return Show(data.get("id") or _new_id(data["name"]), data["name"].strip(), host.get("name", "").strip(),
                host.get("title", "").strip(), tuple(segments), float(data.get("gap_s", 0.6)),
                bool(data.get("auto_answer", False)), bool(data.get("read_questions", False)),
                check_webhook(agent_url) if agent_url else None,
                tuple(word.strip().lower() for word in data.get("blocked_words", ()) if word.strip()),
                data.get("saved_at"))


def _new_id(name: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:30] or "show"
    return f"{stem}-{uuid.uuid4().hex[:6]}" if SHOW_ID.match(stem) else f"show-{uuid.uuid4().hex[:6]}"


class ShowLibrary:
    """Saved shows, one JSON file each under ``root``/shows (made on demand)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "shows"

    def _path(self, show_id: str) -> Path:
        if not SHOW_ID.match(show_id):
            raise InputError(f"show id {show_id!r} must be 1-40 of a-z, 0-9, '-' and '_', starting with a letter or "
                             "digit")
        return self.folder / f"{show_id}.json"

    def list(self) -> list[dict[str, Any]]:
        """Each saved show's id, name, segment count and when it was saved, newest first."""
        found = []
        for path in self.folder.glob("*.json") if self.folder.is_dir() else ():
            try:
                show = self.get(path.stem)
            except (InputError, NotFoundError):
                continue  # a file put there by hand that does not read: not offered
            found.append({"id": show.show_id, "name": show.name, "segments": len(show.segments),
                          "saved_at": show.saved_at})
        return sorted(found, key=lambda entry: -(entry["saved_at"] or 0))

    def get(self, show_id: str) -> Show:
        """A saved show.

        Raises:
            NotFoundError: none saved under that id.
            InputError: the file does not hold a valid show (named).
        """
        path = self._path(show_id)
        if not path.is_file():
            raise NotFoundError(f"no saved show {show_id!r}")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(f"saved show {path} is not JSON: {exc}") from exc
        return parse_show(data)

    def save(self, show: Show) -> Show:
        """Save (or replace) a show under its id; returns it with its ``saved_at``.

        Raises:
            LimitError: ``MAX_SHOWS`` saved already and this is a new one (413).
        """
        path = self._path(show.show_id)
        if not path.exists() and self.folder.is_dir() and len(list(self.folder.glob("*.json"))) >= MAX_SHOWS:
            raise LimitError(f"the library keeps at most {MAX_SHOWS} shows; delete one first", limit="max_shows",
                             value=MAX_SHOWS, http_status=413)
        saved = parse_show({**show.to_dict(), "saved_at": time.time()})
        atomic_write_bytes(path, json.dumps(saved.to_dict(), indent=1).encode())
        return saved

    def delete(self, show_id: str) -> None:
        """Remove a saved show.

        Raises:
            NotFoundError: none saved under that id.
        """
        path = self._path(show_id)
        if not path.is_file():
            raise NotFoundError(f"no saved show {show_id!r}")
        path.unlink()
