"""The broadcast canvas: the twin's frame composed onto a background of the platform's size (9:16 for live
shopping), with the on-screen elements (``stream.overlays``) on top, in planar yuv420p throughout.

``Compositor.compose_i420`` is the live loop's compose step: it runs on the render worker thread inside each
job's ``paste_back`` (``stream`` package docstring, step 4), once per frame, for every output at once (WHEP
viewers, RTMP pushes and recordings all read the one video track). Without a canvas it is the pack's own frame
(``TwinAssets.compose_i420``) with the elements drawn on it.

What a frame costs, and why it is cheap: the background is prepared once (a colour or a picture: one yuv420p
frame; a looping video: every frame decoded and converted once, at start); per frame the background is copied
(one memcpy), the face is pasted into its base frame at the pack's own size as before, that small frame is
converted to yuv420p and its three planes scaled straight into their place on the canvas (one ``warpAffine``
each, which also cuts what falls outside), and each visible element is blended from planes prepared when it
changed. No full-canvas RGB picture is ever made. ``bench/canvas.py`` measures it; BENCHMARKS.md has the numbers.

The operator's placement and background travel as a new immutable ``Layout`` that the event loop swaps in; the
worker reads whichever is current at the start of a frame.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from stream.assets import TwinAssets
from stream.images import cover, decode_image, flatten, i420_planes, rgb_to_i420
from stream.overlays import OverlayLayer
from twincast.errors import InputError, UnprocessableError

CANVAS_PRESETS = ("720x1280", "1080x1920", "1280x720", "1920x1080")
MIN_CANVAS_PX, MAX_CANVAS_PX = 128, 3840
MAX_BACKGROUND_BYTES = 512 * 1024 * 1024  # a looping video is held decoded: at 720x1280 that is 388 frames (15.5 s)
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
DEFAULT_BACKGROUND = "#14161c"


def canvas_size(text: str) -> tuple[int, int] | None:
    """Read ``WIDTHxHEIGHT`` (``serve.canvas``, ``--canvas``); empty or ``pack`` is the pack's own frame (None).

    Raises:
        InputError: not two even whole numbers in ``MIN_CANVAS_PX``..``MAX_CANVAS_PX`` joined by ``x``.
    """
    if text in ("", "pack"):
        return None
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", text)
    if not match:
        raise InputError(f"canvas {text!r} must be WIDTHxHEIGHT, such as {', '.join(CANVAS_PRESETS)}, or empty for "
                         "the pack's own frame")
    width, height = int(match.group(1)), int(match.group(2))
    for name, value in (("width", width), ("height", height)):
        if not MIN_CANVAS_PX <= value <= MAX_CANVAS_PX or value % 2:
            raise InputError(f"canvas {name} {value} must be an even number of pixels in "
                             f"{MIN_CANVAS_PX}..{MAX_CANVAS_PX}")
    return width, height


def parse_colour(text: str) -> tuple[int, int, int]:
    """``#rrggbb`` → (r, g, b).

    Raises:
        InputError: not a ``#rrggbb`` colour.
    """
    if not COLOUR.match(text):
        raise InputError(f"colour {text!r} must be #rrggbb, such as {DEFAULT_BACKGROUND}")
    return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)


@dataclass(frozen=True)
class Background:
    """What lies behind the twin: one or more yuv420p frames of the canvas's size, looped at ``fps``."""

    frames: tuple[np.ndarray, ...]
    fps: float
    description: str

    def frame(self, frame_index: int, stream_fps: int) -> np.ndarray:
        """The background under stream frame ``frame_index`` (read-only; copy before drawing on it)."""
        if len(self.frames) == 1:
            return self.frames[0]
        return self.frames[int(frame_index * self.fps / stream_fps) % len(self.frames)]

    @classmethod
    def colour(cls, text: str, size: tuple[int, int]) -> Background:
        """A solid ``#rrggbb`` colour."""
        width, height = size
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[:] = parse_colour(text)
        return cls((_frozen(rgb_to_i420(rgb)),), 1.0, text)

    @classmethod
    def picture(cls, payload: bytes, size: tuple[int, int], name: str = "") -> Background:
        """A picture (PNG, JPEG, WebP, GIF) scaled to cover the canvas and cut to it; ``name`` (its file's) is how
        messages and the API call it.

        Raises:
            InputError, LimitError, UnprocessableError: see ``images.decode_image``.
        """
        rgb = flatten(decode_image(payload, f"background picture {name}".strip()))
        return cls((_frozen(rgb_to_i420(cover(rgb, *size))),), 1.0, name or "an uploaded picture")

    @classmethod
    def video(cls, path: Path, size: tuple[int, int], max_bytes: int = MAX_BACKGROUND_BYTES) -> Background:
        """Every frame of a video file (its first video stream), scaled to cover the canvas, held decoded.

        Raises:
            InputError: a video that does not fit in ``max_bytes`` decoded (the message says how long may be).
            UnprocessableError: not a decodable video, or one without frames.
        """
        width, height = size
        frame_bytes = width * height * 3 // 2
        limit = max(1, max_bytes // frame_bytes)
        frames: list[np.ndarray] = []
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise UnprocessableError(f"background {path} has no video stream")
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate or 25)
                for decoded in container.decode(stream):
                    if len(frames) == limit:
                        raise InputError(
                            f"background video {path} is longer than the {limit} frames ({limit / fps:.1f} s at "
                            f"{fps:g} fps) that fit in {max_bytes >> 20} MiB decoded at {width}x{height}; cut a "
                            f"shorter loop, e.g. ffmpeg -i {path.name} -t {int(limit / fps)} loop.mp4")
                    frames.append(_frozen(rgb_to_i420(cover(decoded.to_ndarray(format="rgb24"), width, height))))
        except av.error.FFmpegError as exc:
            raise UnprocessableError(f"background {path} is not a video this server can decode: {exc}") from exc
        if not frames:
            raise UnprocessableError(f"background video {path} has no frames")
        return cls(tuple(frames), fps, path.name)

    @classmethod
    def load(cls, spec: str, size: tuple[int, int]) -> Background:
        """``serve.canvas_background``: a ``#rrggbb`` colour, or the path of a picture or a video to loop.

        Raises:
            InputError: neither a colour nor an existing file; a file with a suffix of neither kind.
        """
        if spec.startswith("#"):
            return cls.colour(spec, size)
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"canvas background {spec!r} is neither a #rrggbb colour nor an existing file")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return cls.picture(path.read_bytes(), size, path.name)
        if suffix in VIDEO_SUFFIXES:
            return cls.video(path, size)
        raise InputError(f"canvas background {path.name}: expected a picture ({', '.join(IMAGE_SUFFIXES)}) or a "
                         f"video ({', '.join(VIDEO_SUFFIXES)})")


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class Placement:
    """Where the twin's frame sits on the canvas: its centre (``x``, ``y``, fractions of the canvas's width and
    height) and its width (``scale``, a fraction of the canvas's width; above 1 the frame is cut at the edges)."""

    x: float
    y: float
    scale: float

    def __post_init__(self) -> None:
        for name, value, low, high in (("x", self.x, -0.5, 1.5), ("y", self.y, -0.5, 1.5),
                                       ("scale", self.scale, 0.1, 4.0)):
            if not low <= value <= high:
                raise InputError(f"placement {name} {value} must be in {low}..{high}")

    @classmethod
    def default(cls, canvas: tuple[int, int], twin: tuple[int, int]) -> Placement:
        """The twin as large as fits, at the top of a portrait canvas (room below for products), centred on a
        landscape or square one."""
        width, height = canvas
        twin_width, twin_height = twin
        scale = min(1.0, (height / twin_height) * twin_width / width)
        shown_height = scale * width * twin_height / twin_width
        y = (shown_height / 2) / height if height > width else 0.5
        return cls(0.5, y, scale)

    def box(self, canvas: tuple[int, int], twin: tuple[int, int]) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the twin's frame in canvas pixels, all even (the chroma planes are half
        size); may reach past the canvas."""
        width, height = canvas
        twin_width, twin_height = twin
        shown_width = max(2, 2 * round(self.scale * width / 2))
        shown_height = max(2, 2 * round(shown_width * twin_height / twin_width / 2))
        left = 2 * round((self.x * width - shown_width / 2) / 2)
        top = 2 * round((self.y * height - shown_height / 2) / 2)
        return left, top, shown_width, shown_height

    def to_dict(self) -> dict[str, float]:
        """JSON-ready."""
        return {"x": round(self.x, 4), "y": round(self.y, 4), "scale": round(self.scale, 4)}


@dataclass(frozen=True)
class Layout:
    """One consistent state of the canvas, swapped whole: its background and the twin's placement."""

    background: Background
    placement: Placement
    box: tuple[int, int, int, int]


class Compositor:
    """Composes each frame of one session: the face into its base frame, that frame onto the canvas (when there
    is one), the visible elements on top; planar yuv420p out.

    ``compose_i420`` runs on the render worker thread; ``base_i420`` (a frame with no render) on the event loop;
    ``place`` and ``set_background`` on the event loop. ``overlays`` is the session's element layer.
    """

    def __init__(self, assets: TwinAssets, fps: int, *, canvas: tuple[int, int] | None = None,
                 background: Background | None = None, overlays: OverlayLayer | None = None) -> None:
        self.assets = assets
        self.fps = fps
        self.canvas = canvas
        self.overlays = overlays if overlays is not None else OverlayLayer(canvas or assets.frame_size, fps)
        self._layout: Layout | None = None
        self.compose_ms: deque[float] = deque(maxlen=500)  # appended on the worker thread, read on the loop
        if canvas is not None:
            placement = Placement.default(canvas, assets.frame_size)
            ground = background if background is not None else Background.colour(DEFAULT_BACKGROUND, canvas)
            self._layout = Layout(ground, placement, placement.box(canvas, assets.frame_size))

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames this compositor makes: the canvas's, or the pack's own."""
        return self.canvas or self.assets.frame_size

    @property
    def layout(self) -> Layout | None:
        """The canvas's current background and placement (None without a canvas)."""
        return self._layout

    def place(self, placement: Placement) -> None:
        """Move or scale the twin on the canvas, from the next frame composed.

        Raises:
            InputError: this server composes no canvas.
        """
        layout = self.require_canvas()
        assert self.canvas is not None
        self._layout = Layout(layout.background, placement, placement.box(self.canvas, self.assets.frame_size))

    def set_background(self, background: Background) -> None:
        """Put another background behind the twin, from the next frame composed."""
        layout = self.require_canvas()
        self._layout = Layout(background, layout.placement, layout.box)

    def require_canvas(self) -> Layout:
        """The current layout.

        Raises:
            InputError: this server composes no canvas (the message says how to start one).
        """
        if self._layout is None:
            raise InputError("this server streams the avatar pack's own frame, with no canvas to place the twin "
                             "on; start it with --canvas 720x1280 (or serve.canvas) to compose one")
        return self._layout

    def compose_i420(self, frame_index: int, base_index: int, face: np.ndarray) -> np.ndarray:
        """Frame ``frame_index``: the rendered face (3, C, C) pasted into base frame ``base_index``, on the
        canvas, with the elements; a new yuv420p array."""
        started = time.perf_counter()
        layout = self._layout
        if layout is None:
            frame = self.assets.compose_i420(base_index, face)
        else:
            frame = self._on_canvas(layout, rgb_to_i420(self.assets.compose(base_index, face)), frame_index)
        self.overlays.draw(frame, frame_index)
        self.compose_ms.append(1000 * (time.perf_counter() - started))
        return frame

    def timing(self) -> tuple[float | None, float | None]:
        """p50 and p99 of the recent frames' compose times in ms (None before the first frame)."""
        recent = list(self.compose_ms)
        if not recent:
            return None, None
        p50, p99 = np.percentile(recent, [50, 99])
        return round(float(p50), 2), round(float(p99), 2)

    def base_i420(self, frame_index: int, base_index: int) -> np.ndarray:
        """Frame ``frame_index`` with no render: base frame ``base_index`` as filmed, composed like a render."""
        layout = self._layout
        if layout is None:
            frame = self.assets.base_i420(base_index)
        else:
            frame = self._on_canvas(layout, self.assets.base_i420(base_index), frame_index)
        self.overlays.draw(frame, frame_index)
        return frame

    def _on_canvas(self, layout: Layout, twin: np.ndarray, frame_index: int) -> np.ndarray:
        """The background of ``frame_index`` with the twin's yuv420p frame scaled into its box."""
        assert self.canvas is not None
        width, height = self.canvas
        frame = layout.background.frame(frame_index, self.fps).copy()
        twin_width, twin_height = self.assets.frame_size
        left, top, shown_width, shown_height = layout.box
        for half, source, target in zip((1, 2, 2), i420_planes(twin, twin_width, twin_height),
                                        i420_planes(frame, width, height), strict=True):
            _scale_into(source, target, left // half, top // half, shown_width // half, shown_height // half)
        return frame


def _scale_into(source: np.ndarray, target: np.ndarray, left: int, top: int, width: int, height: int) -> None:
    """Scale the plane ``source`` to ``width``×``height`` and write it at (``left``, ``top``) of ``target``,
    keeping only what falls inside ``target``."""
    target_height, target_width = target.shape
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(target_width, left + width), min(target_height, top + height)
    if x1 <= x0 or y1 <= y0:
        return
    source_height, source_width = source.shape
    matrix = np.array([[width / source_width, 0.0, left - x0], [0.0, height / source_height, top - y0]])
    # Pixel centres: source pixel i covers [i, i+1); keep the mapping of centres exact under scaling.
    matrix[:, 2] += 0.5 * (matrix[0, 0] - 1.0), 0.5 * (matrix[1, 1] - 1.0)
    cv2.warpAffine(source, matrix, (x1 - x0, y1 - y0), dst=target[y0:y1, x0:x1], flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REPLICATE)
