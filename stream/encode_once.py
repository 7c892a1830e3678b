"""Encode once for many direct viewers: one video encoder per session and codec, one Opus encoder per session, their
packets handed to every viewer's sender.

aiortc encodes per sender: each viewer of a session used to run its own VP8 (or H.264) and Opus encoder over the
same frames, about 0.1 core per viewer at 384² (BENCHMARKS.md, "CPU per direct viewer"). Here the session's
frames are encoded once (``SharedVideo``, ``SharedAudio``) and each viewer gets a track whose ``recv`` returns
encoded packets (``av.Packet``), which aiortc's sender only packetizes (``Encoder.pack``) — it encodes a frame
only when a track hands it a frame.

Keyframes. A viewer that joins mid-stream needs a keyframe to start: it waits for the shared stream's next one,
which the shared encoder makes within ``JOIN_KEYFRAME_EVERY_S`` of a join (so a burst of viewers joining at once
— a show starting — costs one or two shared keyframes, not an encoder each). One viewer's picture-loss request
(PLI/FIR, after packet loss) must not force a keyframe on everyone (a keyframe is 8-30 times an ordinary frame):
that viewer is *repaired* — its track encodes the session's frames with a private encoder of its own, starting
with a keyframe, until the shared stream reaches its next keyframe, where it rejoins the shared packets (nothing
is skipped: private and shared packets are of the same frames, with the same timestamps). The shared encoder
makes a keyframe for repaired viewers at most every ``REJOIN_EVERY_S``, so a lossy viewer that keeps asking costs
its own encoder (as before encode-once), never a keyframe storm for the others. A viewer whose queue overflows
(the event loop stalled) drops what it had and is repaired the same way.

Bitrate: the shared encoder runs at a fixed bitrate for the frame size (``video_bitrate``); per-viewer bitrate
adaptation (REMB) does not apply to shared packets. A viewer on a link too slow for that bitrate loses packets,
asks for keyframes and is repaired; an SFU (simulcast) is the answer for very unequal viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import number_of_threads
from aiortc.mediastreams import MediaStreamError

from stream.session import Spawn

log = logging.getLogger(__name__)
QUEUE_PACKETS = 8  # per viewer: about 0.3 s of video; more means the loop stalled
REJOIN_EVERY_S = 5.0  # a keyframe for repaired viewers at most this often, and only when one waits for it
JOIN_KEYFRAME_EVERY_S = 0.5  # a keyframe for joining viewers at most this often (a join waits at most this long)
BITS_PER_PIXEL = 0.15  # per frame: 384² at 25 fps → 553 kbit/s, 720×1280 → 3.5 Mbit/s
MIN_BITRATE = 500_000
MAX_BITRATE = 4_000_000
OPUS_RATE_HZ = 48_000


def video_bitrate(width: int, height: int, fps: int) -> int:
    """The shared encoder's bitrate for a frame size (bits per second)."""
    return int(min(MAX_BITRATE, max(MIN_BITRATE, BITS_PER_PIXEL * width * height * fps)))


def new_video_encoder(codec: str, width: int, height: int, fps: int, time_base: fractions.Fraction) -> Any:
    """A PyAV encoder with aiortc's real-time settings for ``codec`` (``vp8`` or ``h264``): no frame lag (one
    packet out per frame in), constant bitrate, keyframes only when a frame is marked I. Its time base is the
    frames' own, so encoding never rebases a frame's pts (the session's frame objects are read by other consumers
    at the same time)."""
    bitrate = video_bitrate(width, height, fps)
    if codec == "vp8":
        context = av.CodecContext.create("libvpx", "w")
        context.options = {"bufsize": str(bitrate), "cpu-used": "-6", "deadline": "realtime", "lag-in-frames": "0",
                           "minrate": str(bitrate), "maxrate": str(bitrate), "noise-sensitivity": "4",
                           "overshoot-pct": "15", "partitions": "0", "static-thresh": "1", "undershoot-pct": "100"}
        context.qmin, context.qmax = 2, 56
        context.thread_count = number_of_threads(width * height, multiprocessing.cpu_count())  # 1 below 640×480
    elif codec == "h264":
        context = av.CodecContext.create("libx264", "w")
        context.options = {"level": "31", "tune": "zerolatency", "sc_threshold": "0"}  # keyframes when asked only
        context.profile = "Baseline"
    else:
        raise ValueError(f"no shared encoder for codec {codec!r}; expected vp8 or h264")
    context.width, context.height = width, height
    context.bit_rate = bitrate
    context.pix_fmt = "yuv420p"
    context.framerate = fractions.Fraction(fps, 1)
    context.time_base = time_base
    context.gop_size = 100_000  # keyframes come from pict_type only
    return context


def encode_frame(context: Any, frame: av.VideoFrame, keyframe: bool, *, copy: bool = False) -> av.Packet | None:
    """Encode one frame (marked I when ``keyframe``) into one packet stamped with the frame's own pts and time
    base, flagged a keyframe when the encoder made one; None if the encoder gave nothing (it should not, with no
    frame lag). ``copy`` encodes a copy of the frame, for encoders that may run at the same time on the same frame
    (repaired viewers: marking the shared frame I for one would race another's marking)."""
    if copy:
        original = frame
        frame = av.VideoFrame.from_ndarray(original.to_ndarray(format="yuv420p"), format="yuv420p")
        frame.pts, frame.time_base = original.pts, original.time_base
    frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
    pts, time_base = frame.pts, frame.time_base
    assert time_base is not None, "the session's frames carry their time base"
    encoded = list(context.encode(frame))
    if not encoded:
        return None
    packet = av.Packet(b"".join(bytes(part) for part in encoded))
    packet.pts = packet.dts = pts
    packet.time_base = time_base
    packet.is_keyframe = any(part.is_keyframe for part in encoded)
    return packet


@dataclass
class EncodeCounts:
    """What the encoders of one session did: frames encoded once for all, frames encoded for one repairing
    viewer, shared keyframes made for rejoining viewers, viewers repaired."""

    shared_frames: int = 0
    private_frames: int = 0
    shared_keyframes: int = 0
    repairs: int = 0


class PacketTrack(MediaStreamTrack):
    """One viewer's side of a shared encoder: encoded packets, in order, for its sender to packetize."""

    def __init__(self, kind: str, on_stop: Callable[[PacketTrack], None]) -> None:
        super().__init__()
        self.kind = kind
        self._items: asyncio.Queue[tuple[Any, av.Packet] | None] = asyncio.Queue(QUEUE_PACKETS)
        self._on_stop = on_stop

    def offer(self, frame: Any, packet: av.Packet) -> bool:
        """Queue a shared packet (and the frame it was made of); False when the queue was full (the oldest packets
        are dropped: the viewer's decoder then needs a keyframe)."""
        if self._items.full():
            while not self._items.empty():
                self._items.get_nowait()
            self._items.put_nowait((frame, packet))
            return False
        self._items.put_nowait((frame, packet))
        return True

    async def next_item(self) -> tuple[Any, av.Packet]:
        """The next (frame, packet); raises ``MediaStreamError`` once the track is stopped."""
        if self.readyState != "live":
            raise MediaStreamError
        item = await self._items.get()
        if item is None:
            raise MediaStreamError
        return item

    async def recv(self) -> av.Packet:
        return (await self.next_item())[1]

    def stop(self) -> None:
        if self.readyState == "live":
            with contextlib.suppress(asyncio.QueueFull):
                self._items.put_nowait(None)
        super().stop()
        self._on_stop(self)


class ViewerVideo(PacketTrack):
    """A viewer's video: the shared packets from the first shared keyframe after it joined, or while it is
    repaired (it lost packets, or its queue overflowed) packets of its own encoder, starting with a keyframe, until
    the shared stream's next keyframe.

    ``attach`` routes the viewer's keyframe requests (its sender's PLI/FIR handling) here.
    """

    def __init__(self, shared: SharedVideo) -> None:
        super().__init__("video", shared.unsubscribe)
        self._shared = shared
        self._joining = True  # no packet until the shared stream's next keyframe
        self._repairing = False
        self._private: Any = None  # made at the first repaired frame, kept (its rate control warm) for the next
        self._keyframe_due = False  # the next private packet is a keyframe
        shared.wait_for_keyframe(joining=True)

    def attach(self, sender: RTCRtpSender) -> None:
        """Answer ``sender``'s keyframe requests by repairing this viewer (aiortc's sender calls its
        ``_send_keyframe`` on a PLI or FIR; it would otherwise only mark the next frame it encodes itself, and it
        encodes none here)."""
        sender._send_keyframe = self.repair  # type: ignore[method-assign]

    def repair(self) -> None:
        """Send this viewer a keyframe of its own at the next frame and keep encoding for it until it can rejoin
        the shared stream at a shared keyframe."""
        self._keyframe_due = True
        if not self._repairing:
            self._repairing = True
            self._shared.counts.repairs += 1
            self._shared.wait_for_keyframe()

    def offer(self, frame: Any, packet: av.Packet) -> bool:
        if not super().offer(frame, packet):
            self.repair()
            return False
        return True

    async def recv(self) -> av.Packet:
        while True:
            frame, packet = await self.next_item()
            if self._joining:
                if not packet.is_keyframe:
                    continue
                self._joining = False
            if not self._repairing:
                return packet
            if packet.is_keyframe:  # the shared stream can be joined here
                self._repairing, self._keyframe_due = False, False
                return packet
            if self._private is None or self._private.width != frame.width or self._private.height != frame.height:
                self._private = self._shared.new_encoder()
            keyframe, self._keyframe_due = self._keyframe_due, False
            private = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(encode_frame, self._private, frame, keyframe, copy=True))
            self._shared.counts.private_frames += 1
            if private is not None:
                return private


class SharedStream:
    """One encoder's packets for many subscribers: it reads the session's source (made by ``source`` when the
    first subscriber comes) only while it has subscribers, and stops it with the last one. Subclasses encode in
    ``_encode_from``, handing each packet to ``_offer``."""

    def __init__(self, source: Callable[[], MediaStreamTrack], spawn: Spawn, name: str) -> None:
        self._source_factory = source
        self._spawn = spawn
        self._name = name
        self._subscribers: list[PacketTrack] = []
        self._task: asyncio.Task[None] | None = None
        self._source: MediaStreamTrack | None = None

    @property
    def viewers(self) -> int:
        """Subscribers reading the shared packets."""
        return len(self._subscribers)

    def _add(self, track: PacketTrack) -> None:
        self._subscribers.append(track)
        if self._task is None:
            self._source = self._source_factory()
            self._task = self._spawn(self._run(self._source), f"{self._name}-{id(self):x}")

    def unsubscribe(self, track: PacketTrack) -> None:
        """A subscriber's track stopped; the last one stops the encoder and its source."""
        if track in self._subscribers:
            self._subscribers.remove(track)
        if not self._subscribers and self._task is not None:
            self._task.cancel()
            self._task = None
            if self._source is not None:
                self._source.stop()
                self._source = None

    def _offer(self, frame: Any, packet: av.Packet) -> None:
        for subscriber in list(self._subscribers):
            subscriber.offer(frame, packet)

    async def _run(self, source: MediaStreamTrack) -> None:
        try:
            await self._encode_from(source)
        except MediaStreamError:  # the session's track ended: so do its subscribers'
            for subscriber in list(self._subscribers):
                subscriber.stop()

    async def _encode_from(self, source: MediaStreamTrack) -> None:
        raise NotImplementedError


class SharedVideo(SharedStream):
    """A session's video encoded once for every viewer (see the module docstring). It reads the session's
    frames only while it has viewers: ``subscribe`` starts it, the last viewer's track stopping stops it.

    ``source`` makes the frame source when the encoder starts (a relay subscription; stopped with it).
    """

    def __init__(self, codec: str, fps: int, source: Callable[[], MediaStreamTrack], spawn: Spawn, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(source, spawn, "shared-video")
        self.codec = codec
        self.fps = fps
        self.counts = EncodeCounts()
        self._clock = clock
        self._size: tuple[int, int] | None = None
        self._time_base: fractions.Fraction | None = None
        self._waiting = False  # a repaired viewer waits for a shared keyframe to rejoin
        self._joining = False  # a new viewer waits for a shared keyframe to start
        self._last_keyframe_s = -REJOIN_EVERY_S

    def subscribe(self) -> ViewerVideo:
        """A new viewer's video track (from the next shared keyframe); starts encoding if it is the first."""
        track = ViewerVideo(self)
        self._add(track)
        return track

    def wait_for_keyframe(self, *, joining: bool = False) -> None:
        """A viewer waits for the next shared keyframe: a new one (``joining``; made within
        ``JOIN_KEYFRAME_EVERY_S``), or a repaired one to rejoin (made within ``REJOIN_EVERY_S``)."""
        if joining:
            self._joining = True
        else:
            self._waiting = True

    def new_encoder(self) -> Any:
        """An encoder like the shared one, for a repaired viewer."""
        assert self._size is not None and self._time_base is not None, "a viewer is repaired only once frames flow"
        return new_video_encoder(self.codec, *self._size, self.fps, self._time_base)

    async def _encode_from(self, source: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        context: Any = None
        while True:
            frame = await source.recv()
            assert isinstance(frame, av.VideoFrame)
            if context is None or self._size != (frame.width, frame.height):
                assert frame.time_base is not None, "the session's frames carry their time base"
                self._size, self._time_base = (frame.width, frame.height), frame.time_base
                context = new_video_encoder(self.codec, frame.width, frame.height, self.fps, frame.time_base)
            now = self._clock()
            since_s = now - self._last_keyframe_s
            keyframe = ((self._joining and since_s >= JOIN_KEYFRAME_EVERY_S)
                        or (self._waiting and since_s >= REJOIN_EVERY_S))
            packet = await loop.run_in_executor(None, encode_frame, context, frame, keyframe)
            self.counts.shared_frames += 1
            if packet is not None:
                if packet.is_keyframe:  # asked for, or a new encoder's first frame: waiting viewers go on
                    self._waiting = self._joining = False
                    self._last_keyframe_s = now
                    self.counts.shared_keyframes += 1
                self._offer(frame, packet)


class SharedAudio(SharedStream):
    """A session's audio encoded to Opus once (aiortc's own Opus encoder and settings) for every viewer; reads the
    session's audio only while it has viewers. ``source`` makes the paced audio track when it starts."""

    def __init__(self, source: Callable[[], MediaStreamTrack], spawn: Spawn) -> None:
        super().__init__(source, spawn, "shared-audio")

    def subscribe(self) -> PacketTrack:
        """A new viewer's audio track."""
        track = PacketTrack("audio", self.unsubscribe)
        self._add(track)
        return track

    async def _encode_from(self, source: MediaStreamTrack) -> None:
        encoder = OpusEncoder()
        base = fractions.Fraction(1, OPUS_RATE_HZ)
        while True:
            frame = await source.recv()
            assert isinstance(frame, av.AudioFrame)
            payloads, timestamp = encoder.encode(frame)
            for index, payload in enumerate(payloads):  # none while the resampler fills its first frame
                packet = av.Packet(payload)
                packet.pts = timestamp + index * (OPUS_RATE_HZ // 50)
                packet.time_base = base
                self._offer(frame, packet)
