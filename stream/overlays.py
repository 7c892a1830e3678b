"""On-screen elements drawn into the video: a product card, a lower third with the host's name, a price/offer
badge with a countdown, a ticker. Drawn with Pillow, blended into the yuv420p frames by ``OverlayLayer.draw``.

Each element is drawn once per change (``stream.overlay_art`` makes the RGBA picture; ``Sprite`` turns it into
premultiplied Y, U, V planes and their alpha), so a frame only blends planes: two OpenCV calls per plane. Only
the countdown changes while shown, once a second (the badge is drawn again when its shown second changes, and
kept); the ticker is one long strip drawn once, of which each frame shows a window.

Showing and hiding fade over ``FADE_FRAMES`` frames. The layer's state is a function of the frame index: an
element shown "now" is shown from the first frame not yet composed, and every frame's opacity follows from that
index, so a frame composed twice (re-rendered after an interrupt) looks the same both times. The event loop
changes the state by swapping an immutable tuple; the render worker reads whichever tuple is current.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image

from stream.images import i420_planes
from stream.overlay_art import (
    CardContent,
    ElementLayout,
    draw_badge,
    draw_card,
    draw_lower_third,
    draw_ticker_strip,
)

FADE_FRAMES = 8  # 320 ms at 25 fps
KINDS = ("card", "lower_third", "badge", "ticker")
KEEP_HIDDEN_FRAMES = 250  # a faded-out element is forgotten this many frames later (re-renders go back a few)
TICKER_PX_PER_S = 80.0  # at a 720-pixel-wide frame; scaled with the frame


def _premultiplied_planes(rgba: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """An RGBA picture of even size → (premultiplied Y, U, V planes, (alpha, chroma alpha)), all uint8.

    The colours are converted as OpenCV's RGB→yuv420p conversion does (BT.601, limited range, matched to within a
    grey level by the tests); the chroma planes average each 2×2 block of premultiplied colour, so transparent
    pixels never bleed their (undefined) colour into an edge.
    """
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 16.0 + (65.738 * red + 129.057 * green + 25.064 * blue) / 256.0
    chroma_u = 128.0 + (-37.945 * red - 74.494 * green + 112.439 * blue) / 256.0
    chroma_v = 128.0 + (112.439 * red - 94.154 * green - 18.285 * blue) / 256.0
    height, width = alpha.shape

    def halve(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    alpha_half = halve(alpha)
    planes = (luma * alpha, halve(chroma_u * alpha), halve(chroma_v * alpha))
    as_bytes = tuple(np.clip(np.rint(plane), 0, 255).astype(np.uint8) for plane in planes)
    alphas = tuple(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8) for a in (alpha, alpha_half))
    return as_bytes, alphas


@dataclass(frozen=True)
class Sprite:
    """An element's picture, ready to blend: premultiplied planes and alpha at (``left``, ``top``), both even."""

    left: int
    top: int
    planes: tuple[np.ndarray, ...]  # Y (h, w), U and V (h/2, w/2), premultiplied by alpha
    alphas: tuple[np.ndarray, ...]  # alpha (h, w) and chroma alpha (h/2, w/2)
    inverse: tuple[np.ndarray, ...] = field(default=())  # 255 - alpha, precomputed for full opacity

    @classmethod
    def from_picture(cls, picture: Image.Image, left: int, top: int) -> Sprite:
        """Prepare an RGBA picture (padded to an even size) to be drawn at (``left``, ``top``), rounded down to
        even pixels."""
        width, height = picture.size
        if width % 2 or height % 2:
            padded = Image.new("RGBA", (width + width % 2, height + height % 2), (0, 0, 0, 0))
            padded.paste(picture, (0, 0))
            picture = padded
        planes, alphas = _premultiplied_planes(np.asarray(picture.convert("RGBA")))
        return cls(left - left % 2, top - top % 2, planes, alphas, tuple(cv2.bitwise_not(a) for a in alphas))

    def window(self, column: int, width: int, left: int) -> Sprite:
        """Columns ``column`` .. ``column + width`` (both even) of this sprite, drawn at ``left``: views, no copy."""
        half = column // 2, width // 2

        def cut(plane: np.ndarray, chroma: bool) -> np.ndarray:
            start, size = (half if chroma else (column, width))
            return plane[:, start:start + size]

        chroma = (False, True, True)
        return Sprite(left, self.top, tuple(cut(p, c) for p, c in zip(self.planes, chroma, strict=True)),
                      tuple(cut(a, c) for a, c in zip(self.alphas, (False, True), strict=True)),
                      tuple(cut(a, c) for a, c in zip(self.inverse, (False, True), strict=True)))

    def draw(self, frame: np.ndarray, width: int, height: int, opacity: float) -> None:
        """Blend into the yuv420p ``frame`` (width × height) in place: out = frame × (1 − αo) + premultiplied × o."""
        for index, plane in enumerate(i420_planes(frame, width, height)):
            half = 2 if index else 1
            alpha_index = 1 if index else 0
            overlay = self.planes[index]
            left, top = self.left // half, self.top // half
            rows, columns = overlay.shape
            x0, y0 = max(0, left), max(0, top)
            x1, y1 = min(plane.shape[1], left + columns), min(plane.shape[0], top + rows)
            if x1 <= x0 or y1 <= y0:
                continue
            cut = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
            region = plane[y0:y1, x0:x1]
            if opacity >= 1.0:
                keep, add = self.inverse[alpha_index][cut], overlay[cut]
            else:
                keep = cv2.bitwise_not(cv2.convertScaleAbs(self.alphas[alpha_index][cut], alpha=opacity))
                add = cv2.convertScaleAbs(overlay[cut], alpha=opacity)
            cv2.multiply(region, keep, dst=region, scale=1.0 / 255.0)
            cv2.add(region, add, dst=region)


class Element(Protocol):
    """Something drawn on the frames: its kind, what it shows, and its sprite at a frame."""

    kind: str
    summary: dict[str, Any]

    def sprite(self, frame_index: int) -> Sprite:
        """The sprite to blend into frame ``frame_index``."""
        ...

    def picture(self, frame_index: int) -> Image.Image:
        """The RGBA picture at frame ``frame_index`` (what ``/overlay`` shows)."""
        ...

    def box(self) -> tuple[int, int, int, int]:
        """(left, top, width, height) in frame pixels."""
        ...


class StillElement:
    """An element that does not change while shown (the card, the lower third)."""

    def __init__(self, kind: str, picture: Image.Image, left: int, top: int, summary: dict[str, Any]) -> None:
        self.kind = kind
        self.summary = summary
        self._picture = picture
        self._sprite = Sprite.from_picture(picture, left, top)

    def sprite(self, frame_index: int) -> Sprite:
        return self._sprite

    def picture(self, frame_index: int) -> Image.Image:
        return self._picture

    def box(self) -> tuple[int, int, int, int]:
        return self._sprite.left, self._sprite.top, *self._picture.size


def countdown_text(seconds_left: int) -> str:
    """``ends in 04:59`` (``ends in 1:02:03`` from an hour), or ``offer ended`` at zero."""
    if seconds_left <= 0:
        return "offer ended"
    hours, rest = divmod(seconds_left, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"ends in {hours}:{minutes:02d}:{seconds:02d}" if hours else f"ends in {minutes:02d}:{seconds:02d}"


class CountdownBadge:
    """The price/offer badge; with ``ends_at_frame`` it counts down ("ends in 04:59"), drawn once per second.

    The render worker and, for a frame with no render, the event loop may both ask for the same second; they
    may both draw it (the same picture), and the cache keeps one: a harmless race, no lock in the frame path.
    """

    kind = "badge"

    def __init__(self, layout: ElementLayout, text: str, detail: str, ends_at_frame: int | None, fps: int) -> None:
        self.summary: dict[str, Any] = {"text": text, "detail": detail, "ends_at_frame": ends_at_frame}
        self._layout = layout
        self._text = text
        self._detail = detail
        self._ends_at_frame = ends_at_frame
        self._fps = fps
        self._drawn: tuple[int, Image.Image, Sprite] | None = None

    def seconds_left(self, frame_index: int) -> int | None:
        """Whole seconds of the offer left at ``frame_index`` (rounded up), or None without a countdown."""
        if self._ends_at_frame is None:
            return None
        return max(0, math.ceil((self._ends_at_frame - frame_index) / self._fps))

    def _draw(self, frame_index: int) -> tuple[int, Image.Image, Sprite]:
        left = self.seconds_left(frame_index)
        key = -1 if left is None else left
        drawn = self._drawn
        if drawn is None or drawn[0] != key:
            lines = [self._detail] if self._detail else []
            if left is not None:
                lines.append(countdown_text(left))
            picture = draw_badge(self._layout, self._text, lines)
            x, y = self._layout.badge_origin(picture.size)
            drawn = (key, picture, Sprite.from_picture(picture, x, y))
            self._drawn = drawn
        return drawn

    def sprite(self, frame_index: int) -> Sprite:
        return self._draw(frame_index)[2]

    def picture(self, frame_index: int) -> Image.Image:
        return self._draw(frame_index)[1]

    def box(self) -> tuple[int, int, int, int]:
        _, picture, sprite = self._draw(self._ends_at_frame or 0)
        return sprite.left, sprite.top, *picture.size


class Ticker:
    """Text scrolling right to left along the bottom: one strip drawn once (the text twice over, so any window
    of the frame's width lies inside it); frame *n* shows the window starting ``speed × n`` pixels in."""

    kind = "ticker"

    def __init__(self, layout: ElementLayout, text: str, started_at_frame: int, fps: int) -> None:
        self.summary: dict[str, Any] = {"text": text}
        self.strip = draw_ticker_strip(layout, text)  # one period; drawn twice over below
        self.period_px = self.strip.size[0]
        self.px_per_frame = TICKER_PX_PER_S * layout.unit / fps
        self.px_per_s = TICKER_PX_PER_S * layout.unit
        self._width = layout.width
        self._started_at = started_at_frame
        top = layout.ticker_top(self.strip.size[1])
        doubled = Image.new("RGBA", (2 * self.period_px + layout.width, self.strip.size[1]), (0, 0, 0, 0))
        for copy in range(2 + layout.width // self.period_px):
            doubled.paste(self.strip, (copy * self.period_px, 0))
        self._whole = Sprite.from_picture(doubled.crop((0, 0, self.period_px + layout.width,
                                                         self.strip.size[1])), 0, top)

    def offset_px(self, frame_index: int) -> int:
        """How far the strip has scrolled at ``frame_index`` (even, within one period)."""
        travelled = int((frame_index - self._started_at) * self.px_per_frame) % self.period_px
        return travelled - travelled % 2

    def sprite(self, frame_index: int) -> Sprite:
        return self._whole.window(self.offset_px(frame_index), self._width, 0)

    def picture(self, frame_index: int) -> Image.Image:
        return self.strip

    def box(self) -> tuple[int, int, int, int]:
        return 0, self._whole.top, self._width, self.strip.size[1]


def card_element(layout: ElementLayout, content: CardContent, summary: dict[str, Any]) -> StillElement:
    """A product card (drawn now: call it off the event loop)."""
    return StillElement("card", draw_card(layout, content), *layout.card_origin(), summary)


def lower_third_element(layout: ElementLayout, title: str, subtitle: str) -> StillElement:
    """A lower third with the host's name (drawn now)."""
    picture = draw_lower_third(layout, title, subtitle)
    return StillElement("lower_third", picture, *layout.lower_third_origin(picture.size),
                        {"title": title, "subtitle": subtitle})


@dataclass(frozen=True)
class Showing:
    """An element on screen from ``shown_at`` (fading in), until ``hidden_at`` (fading out), in frame indices."""

    element: Element
    shown_at: int
    hidden_at: int | None = None

    def opacity(self, frame_index: int) -> float:
        """0 (not drawn) … 1 (fully shown) at ``frame_index``."""
        if frame_index < self.shown_at:
            return 0.0
        shown = min(1.0, (frame_index - self.shown_at + 1) / FADE_FRAMES)
        if self.hidden_at is None or frame_index < self.hidden_at:
            return shown
        return max(0.0, min(shown, 1.0 - (frame_index - self.hidden_at + 1) / FADE_FRAMES))

    def gone_by(self, frame_index: int) -> bool:
        """Whether it was fully faded out long enough before ``frame_index`` to be forgotten."""
        return self.hidden_at is not None and frame_index > self.hidden_at + FADE_FRAMES + KEEP_HIDDEN_FRAMES


class OverlayLayer:
    """The elements of one session's video and when each is shown (see the module docstring).

    ``burn_in`` False leaves the video clean (a producer who composites ``/overlay`` in OBS instead); the
    elements are still shown there.
    """

    def __init__(self, frame_size: tuple[int, int], fps: int) -> None:
        self.frame_size = frame_size
        self.fps = fps
        self.layout = ElementLayout(*frame_size)
        self.burn_in = True
        self.version = 0  # bumped on every change (the /overlay page and the dashboard poll it)
        self._showing: tuple[Showing, ...] = ()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (on the event loop) after every change. Returns what stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self, showing: tuple[Showing, ...]) -> None:
        self._showing = showing
        self.version += 1
        for listener in self._listeners:
            listener()

    def show(self, element: Element, at_frame: int) -> None:
        """Fade ``element`` in from ``at_frame``; one of the same kind already shown fades out meanwhile."""
        kept = self._without(element.kind, at_frame)
        self._changed((*kept, Showing(element, at_frame)))

    def hide(self, kind: str, at_frame: int) -> bool:
        """Fade the shown element of ``kind`` out from ``at_frame``; False when none is shown."""
        shown = self.current(kind, at_frame) is not None
        self._changed(self._without(kind, at_frame))
        return shown

    def set_burn_in(self, burn_in: bool) -> None:
        """Draw the elements into the video (True) or leave it clean (False)."""
        self.burn_in = burn_in
        self._changed(self._showing)

    def _without(self, kind: str, at_frame: int) -> tuple[Showing, ...]:
        kept = []
        for showing in self._showing:
            if showing.gone_by(at_frame):
                continue
            if showing.element.kind == kind and (showing.hidden_at is None or showing.hidden_at > at_frame):
                if showing.shown_at >= at_frame:
                    continue  # never on screen: drop it
                showing = Showing(showing.element, showing.shown_at, at_frame)
            kept.append(showing)
        return tuple(kept)

    def current(self, kind: str, frame_index: int) -> Showing | None:
        """The element of ``kind`` shown (or fading in) at ``frame_index``, not one fading out."""
        for showing in self._showing:
            if showing.element.kind == kind and (showing.hidden_at is None or showing.hidden_at > frame_index):
                return showing
        return None

    def draw(self, frame: np.ndarray, frame_index: int) -> None:
        """Blend every element visible at ``frame_index`` into the yuv420p ``frame``, in place."""
        if not self.burn_in:
            return
        width, height = self.frame_size
        for showing in self._showing:
            opacity = showing.opacity(frame_index)
            if opacity > 0.0:
                showing.element.sprite(frame_index).draw(frame, width, height, opacity)

    def describe(self, frame_index: int) -> dict[str, Any]:
        """What is on screen at ``frame_index``, kind by kind (for the API, the dashboard and ``/overlay``)."""
        elements = {}
        for kind in KINDS:
            showing = self.current(kind, frame_index)
            if showing is None:
                elements[kind] = {"visible": False}
                continue
            element = showing.element
            entry: dict[str, Any] = {"visible": True, "box": list(element.box()), "since_frame": showing.shown_at,
                                     **element.summary}
            if isinstance(element, CountdownBadge):
                entry["seconds_left"] = element.seconds_left(frame_index)
            if isinstance(element, Ticker):
                entry.update(period_px=element.period_px, px_per_s=round(element.px_per_s, 2),
                             offset_px=element.offset_px(frame_index))
            elements[kind] = entry
        return {"frame_size": list(self.frame_size), "burn_in": self.burn_in, "fade_frames": FADE_FRAMES,
                "version": self.version, "elements": elements}

    def png(self, kind: str, frame_index: int) -> bytes | None:
        """The shown element of ``kind`` as a PNG with its transparency, or None when none is shown."""
        showing = self.current(kind, frame_index)
        if showing is None:
            return None
        buffer = io.BytesIO()
        showing.element.picture(frame_index).save(buffer, format="PNG")
        return buffer.getvalue()
