"""A live session switches to another twin without a gap: the video track's frames keep their pace and size, and
the next frames come from the new twin (unit tier: a hand-driven clock, tiny renderers on the real render worker
thread)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from avatar.audio import MelSpec
from avatar.speech import Voice
from stream.assets import TwinAssets
from stream.canvas import Background, Compositor
from stream.images import rgb_to_i420
from stream.render_worker import RenderWorker
from stream.session import Twin, TwinSession
from stream.tracks import TwinVideoTrack
from stream.tts import EspeakTTS
from stream.twins import switch_compositor
from tests.stream.manual_clock import ManualTime
from tests.stream.tiny_twin import CROP_PX, FRAME_PX, TinyRenderer, tiny_assets
from twincast.errors import InputError

PAD_PX = 16  # the wide twin's frame: the tiny one's with this much green on each side, and fewer base frames
WIDE_BASE_FRAMES = 5
SWITCH_AT = 20  # the tick at which the switch is asked for
TICKS = 45


def wide_assets() -> TwinAssets:
    """Another twin: a 128×96 frame (the tiny twin's, tinted and padded with green), 5 base frames."""
    assets = tiny_assets()
    frames = assets.base_frames[:WIDE_BASE_FRAMES].astype(np.int16)
    frames[..., 0] = np.clip(frames[..., 0] - 60, 0, 255)  # a bluer face
    padded = np.pad(frames.astype(np.uint8), ((0, 0), (0, 0), (PAD_PX, PAD_PX), (0, 0)))
    padded[:, :, :PAD_PX] = padded[:, :, -PAD_PX:] = (40, 200, 60)
    transforms = assets.transforms[:WIDE_BASE_FRAMES].copy()
    transforms[:, 0, 2] -= PAD_PX * transforms[:, 0, 0]  # frame x moved right by the padding
    return replace(assets, base_frames=padded, transforms=transforms,
                   masked_crops=assets.masked_crops[:WIDE_BASE_FRAMES], base_poses=assets.base_poses[:WIDE_BASE_FRAMES])


async def run_switch(canvas: tuple[int, int] | None) -> dict[str, Any]:
    """Stream the tiny twin, switch to the wide one at ``SWITCH_AT``, and keep every frame the video track sent."""
    worker = RenderWorker({"a": TinyRenderer(0), "b": TinyRenderer(1)}, asyncio.get_running_loop(),  # type: ignore[dict-item]
                          max_batch=4)
    worker.start()
    manual = ManualTime()
    clock = manual.clock()
    first = Twin("tiny", tiny_assets(), "a", MelSpec(), CROP_PX)
    second = Twin("wide", wide_assets(), "b", MelSpec(), CROP_PX)
    background = Background.colour("#202020", canvas) if canvas else None
    session = TwinSession("s", first, worker, clock, tts=EspeakTTS(Voice()), pose_mode="loop", lead_frames=2,
                          noise=np.zeros((3, CROP_PX, CROP_PX), np.float32), max_queued_frames=500,
                          spawn=lambda coroutine, name: asyncio.ensure_future(coroutine),
                          compositor=Compositor(first.assets, 25, canvas=canvas, background=background))
    worker.attach("a")
    switched: list[tuple[str, str]] = []
    session.on("twin_switched", lambda old, new: switched.append((old, new)))
    producer = asyncio.ensure_future(session.run())
    track = TwinVideoTrack(session)
    frames: list[Any] = []

    async def consume() -> None:
        while True:
            frames.append(await track.recv())

    consumer = asyncio.ensure_future(consume())
    size_before = session.frame_size
    try:
        for tick in range(TICKS):
            if tick == SWITCH_AT:
                session.switch_twin(second, np.zeros((3, CROP_PX, CROP_PX), np.float32),
                                    switch_compositor(session.compositor, second.assets))
            manual.advance_to(clock.deadline(tick))
            for _ in range(5):
                await asyncio.sleep(0)
            _wait_for_renders(worker)
            for _ in range(5):
                await asyncio.sleep(0)
    finally:
        producer.cancel()
        consumer.cancel()
        worker.stop()
    return {"frames": frames, "switched": switched, "size_before": size_before, "size_after": session.frame_size,
            "twin": session.twin.name, "base_index": session.pose.describe()["base_index"],
            "feeds": dict(worker._feeds), "stats": session.stats(), "delay": session.delay_frames}


def _wait_for_renders(worker: RenderWorker) -> None:
    """Until the worker has taken every queued job, and a moment for the one in hand (its result comes back on
    the loop, which the caller runs next)."""
    deadline = time.monotonic() + 10
    while worker.depth and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.03)


def letterbox_luma() -> int:
    return int(rgb_to_i420(np.zeros((2, 2, 3), np.uint8))[0, 0])


def test_a_session_switches_twins_without_a_gap_and_keeps_its_picture_size() -> None:
    out = asyncio.run(run_switch(canvas=None))
    frames = out["frames"]
    pts = [frame.pts for frame in frames]
    assert len(frames) > 30 and all(b - a == 3600 for a, b in zip(pts, pts[1:], strict=False))  # no gap, no jump
    assert {(frame.width, frame.height) for frame in frames} == {(FRAME_PX, FRAME_PX)}  # one size throughout
    assert out["size_before"] == out["size_after"] == (FRAME_PX, FRAME_PX)
    assert out["switched"] == [("tiny", "wide")] and out["twin"] == "wide"
    assert out["base_index"] < WIDE_BASE_FRAMES  # the pose driver walks the new twin's (shorter) loop
    assert out["feeds"] == {"a": 0, "b": 1}  # the worker batches for the engine the session now feeds
    black = letterbox_luma()
    # The wide twin is scaled to fit the square frame, centred: black bars above and below, green at its sides.
    luma = [frame.to_ndarray(format="yuv420p")[:FRAME_PX] for frame in frames]
    barred = [bool(np.abs(y[:8].astype(int) - black).max() <= 2 and np.abs(y[-8:].astype(int) - black).max() <= 2)
              for y in luma]
    first_new = barred.index(True)
    switch_frame = SWITCH_AT - MelSpec().future_frames  # the first frame submitted after the switch's tick
    assert pts[first_new] // 3600 == switch_frame  # the first frame rendered after the switch shows the new twin
    assert not any(barred[:first_new]) and all(barred[first_new:])  # and every frame after it
    rgb = frames[-1].to_ndarray(format="rgb24")
    middle = rgb[FRAME_PX // 2, :PAD_PX * 3 // 4 - 1].astype(int)  # the green padding, scaled by 0.75
    assert (middle[:, 1] > middle[:, 0] + 60).all() and (middle[:, 1] > middle[:, 2] + 60).all()
    assert out["stats"]["failed_frames"] == 0 and out["stats"]["twin"] == "wide"


def test_on_a_canvas_the_new_twin_takes_the_old_ones_place() -> None:
    canvas = (96, 160)
    out = asyncio.run(run_switch(canvas=canvas))
    frames = out["frames"]
    assert {(frame.width, frame.height) for frame in frames} == {canvas}
    pts = [frame.pts for frame in frames]
    assert all(b - a == 3600 for a, b in zip(pts, pts[1:], strict=False))
    # At the top of the portrait canvas: the square twin fills the width; the wide one (4:3) is shorter, so the
    # canvas's own background shows where the square twin's bottom rows were.
    rows = [frame.to_ndarray(format="rgb24")[FRAME_PX - 6: FRAME_PX - 2].astype(int) for frame in frames]
    background = [bool((np.abs(r - 0x20) <= 3).all()) for r in rows]
    assert not background[0] and background[-1]
    assert out["switched"] == [("tiny", "wide")]


def test_a_switch_to_a_twin_that_hears_audio_differently_is_refused() -> None:
    async def attempt() -> None:
        worker = RenderWorker({}, asyncio.get_running_loop(), max_batch=1)
        first = Twin("tiny", tiny_assets(), "a", MelSpec(), CROP_PX)
        other = Twin("other", tiny_assets(), "b", MelSpec(n_mels=40), CROP_PX)
        session = TwinSession("s", first, worker, ManualTime().clock(), tts=EspeakTTS(Voice()), pose_mode="loop",
                              lead_frames=2, noise=np.zeros((3, CROP_PX, CROP_PX), np.float32), max_queued_frames=10,
                              spawn=lambda coroutine, name: asyncio.ensure_future(coroutine))
        with pytest.raises(InputError, match="hears audio"):
            session.switch_twin(other, session.noise, switch_compositor(session.compositor, other.assets))

    asyncio.run(attempt())
