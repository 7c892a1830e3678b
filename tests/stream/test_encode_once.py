"""Encode once (stream.encode_once): one encoder for every viewer, keyframes of their own for viewers that join or
ask, clean pictures across the switches — with real VP8 and H.264 encoders and decoders, on an injected clock."""

from __future__ import annotations

import asyncio
import fractions
import math
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack

from stream.encode_once import JOIN_KEYFRAME_EVERY_S, REJOIN_EVERY_S, SharedAudio, SharedVideo, ViewerVideo
from stream.tracks import VIDEO_CLOCK_HZ

FPS = 25
SIZE = 64
CLEAN_PSNR_DB = 30.0
PLI_AT = 40  # the frame at which the second viewer asks for a keyframe


def picture(index: int) -> np.ndarray:
    """A yuv420p picture that changes every frame: a gradient and a square moving across it."""
    luma = np.tile(np.linspace(40, 200, SIZE, dtype=np.float32), (SIZE, 1))
    x = 4 + (index * 2) % (SIZE - 20)
    luma[20:36, x:x + 16] = 235
    chroma = np.full((SIZE // 2, SIZE), 128, np.float32)
    return np.concatenate([luma, chroma]).astype(np.uint8)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    error = float(np.mean((a[:SIZE].astype(np.float64) - b[:SIZE].astype(np.float64)) ** 2))
    return 99.0 if error == 0 else 10 * np.log10(255.0**2 / error)


class SteppedFrames(MediaStreamTrack):
    """The session's frames, one each time the test steps it (frame i has pts i × 3600 on the 90 kHz clock)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.steps: asyncio.Queue[int] = asyncio.Queue()

    async def recv(self) -> av.VideoFrame:
        index = await self.steps.get()
        frame = av.VideoFrame.from_ndarray(picture(index), format="yuv420p")
        frame.pts = index * (VIDEO_CLOCK_HZ // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
        return frame


class Watcher:
    """A viewer: reads its track's packets and decodes them as a browser would."""

    def __init__(self, track: ViewerVideo, codec: str) -> None:
        self.track = track
        self.decoder = av.CodecContext.create("libvpx" if codec == "vp8" else "h264", "r")
        self.seen: dict[int, tuple[bool, float]] = {}  # frame index → (keyframe, PSNR of the decoded picture)

    async def take(self) -> int:
        packet = await self.track.recv()
        assert packet.pts is not None
        index = packet.pts // (VIDEO_CLOCK_HZ // FPS)
        decoded = self.decoder.decode(av.Packet(bytes(packet)))
        assert len(decoded) == 1, f"frame {index} decoded to {len(decoded)} pictures"
        self.seen[index] = (bool(packet.is_keyframe), psnr_db(decoded[0].to_ndarray(format="yuv420p"),
                                                              picture(index)))
        return index

    def keyframes(self) -> list[int]:
        return sorted(index for index, (key, _) in self.seen.items() if key)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_viewers_share_one_encoder_and_get_keyframes_of_their_own(codec: str) -> None:
    async def scenario() -> dict[str, Any]:
        now = [0.0]
        source = SteppedFrames()
        loop = asyncio.get_running_loop()
        shared = SharedVideo(codec, FPS, lambda: source, lambda coro, name: loop.create_task(coro, name=name),
                             clock=lambda: now[0])
        watchers: dict[str, Watcher] = {}

        async def step(index: int) -> None:
            now[0] = index / FPS
            source.steps.put_nowait(index)
            for watcher in watchers.values():
                assert await asyncio.wait_for(watcher.take(), 10) == index

        watchers["a"] = Watcher(shared.subscribe(), codec)
        for index in range(10):
            await step(index)
        after_a = shared.counts.private_frames
        watchers["b"] = Watcher(shared.subscribe(), codec)  # joins mid-stream, at 0.4 s
        for index in range(10, join):
            now[0] = index / FPS
            source.steps.put_nowait(index)  # b waits (nothing for it) until the join keyframe
            assert await asyncio.wait_for(watchers["a"].take(), 10) == index
        for index in range(join, PLI_AT):
            await step(index)
        watchers["b"].track.repair()  # b's picture was lost (its sender got a PLI)
        for index in range(PLI_AT, rejoin + 10):
            await step(index)
        counts = shared.counts
        for watcher in watchers.values():
            watcher.track.stop()
        return {"a": watchers["a"], "b": watchers["b"], "after_a": after_a, "counts": counts, "source": source,
                "viewers": shared.viewers}

    join = math.ceil(JOIN_KEYFRAME_EVERY_S * FPS)  # the first frame at least 0.5 s after the first keyframe
    rejoin = join + math.ceil(REJOIN_EVERY_S * FPS)  # 5 s after the join keyframe
    result = asyncio.run(scenario())
    a, b, counts = result["a"], result["b"], result["counts"]
    # The first viewer starts on the new encoder's keyframe: nothing encoded for it alone.
    assert result["after_a"] == 0
    # Shared keyframes: the first, one for b's join, one for b to rejoin after its repair; none else.
    assert a.keyframes() == [0, join, rejoin], a.keyframes()
    # b: starts at the join keyframe, gets a keyframe of its own when it asks, rejoins at the next shared one.
    assert min(b.seen) == join
    assert b.keyframes() == [join, PLI_AT, rejoin], b.keyframes()
    total = rejoin + 10
    assert counts.shared_frames == total
    assert counts.private_frames == rejoin - PLI_AT
    assert counts.shared_keyframes == 3 and counts.repairs == 1
    # Every picture either viewer decoded is clean, across every switch between its own and the shared packets.
    for watcher in (a, b):
        worst = min(db for _, db in watcher.seen.values())
        assert worst >= CLEAN_PSNR_DB, worst
    assert len(b.seen) == total - join
    # The last viewer leaving stops the encoder and its source.
    assert result["viewers"] == 0 and result["source"].readyState == "ended"


def test_a_slow_viewer_waits_for_a_keyframe_instead_of_decoding_garbage() -> None:
    async def scenario() -> Watcher:
        source = SteppedFrames()
        loop = asyncio.get_running_loop()
        shared = SharedVideo("vp8", FPS, lambda: source, lambda coro, name: loop.create_task(coro, name=name),
                             clock=lambda: 0.0)
        watcher = Watcher(shared.subscribe(), "vp8")
        source.steps.put_nowait(0)
        await watcher.take()
        for index in range(1, 20):  # the viewer does not read: its queue overflows and drops what it held
            source.steps.put_nowait(index)
        deadline = loop.time() + 10
        while shared.counts.shared_frames < 20 and loop.time() < deadline:  # noqa: ASYNC110 - a count, no event
            await asyncio.sleep(0.01)
        assert shared.counts.shared_frames == 20
        while watcher.track._items.qsize():  # what is left after the overflow
            await watcher.take()
        watcher.track.stop()
        return watcher

    watcher = asyncio.run(scenario())
    after_gap = min(index for index in watcher.seen if index > 0)
    assert after_gap > 1  # frames were dropped ...
    assert watcher.seen[after_gap][0]  # ... and the first one after the gap is a keyframe of its own
    assert min(db for _, db in watcher.seen.values()) >= CLEAN_PSNR_DB


def test_audio_is_encoded_once_for_every_listener() -> None:
    class Tone(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.block = 0
            self.steps: asyncio.Queue[None] = asyncio.Queue()

        async def recv(self) -> av.AudioFrame:
            await self.steps.get()
            samples = (3000 * np.sin(np.arange(960) * 2 * np.pi * 440 / 48_000)).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = 48_000
            frame.pts = self.block * 960
            frame.time_base = fractions.Fraction(1, 48_000)
            self.block += 1
            return frame

    async def scenario() -> tuple[list[list[bytes]], list[list[int]]]:
        loop = asyncio.get_running_loop()
        made: list[Tone] = []

        def source() -> Tone:
            made.append(Tone())
            return made[-1]

        shared = SharedAudio(source, lambda coro, name: loop.create_task(coro, name=name))
        listeners = [shared.subscribe(), shared.subscribe()]
        packets: list[list[Any]] = [[], []]
        for _ in range(20):
            made[0].steps.put_nowait(None)
            for got, listener in zip(packets, listeners, strict=True):
                got.append(await asyncio.wait_for(listener.recv(), 10))
        for listener in listeners:
            listener.stop()
        assert len(made) == 1 and made[0].readyState == "ended"  # one source, stopped with the last listener
        return [[bytes(p) for p in got] for got in packets], [[p.pts for p in got] for got in packets]

    payloads, stamps = asyncio.run(scenario())
    assert payloads[0] == payloads[1]  # the very same Opus packets
    assert all(len(p) > 0 for p in payloads[0])
    assert np.all(np.diff(stamps[0]) == 960)  # 20 ms apart on the 48 kHz clock
