"""Measure TwincastVideoService against a running twincast server (numbers for docs/avatar-protocol.md).

    .venv-pipecat/bin/python integrations/pipecat/bench.py --url http://127.0.0.1:8080 --token … interrupt
    .venv-pipecat/bin/python integrations/pipecat/bench.py --url http://127.0.0.1:8080 --token … ahead
    .venv-pipecat/bin/python integrations/pipecat/bench.py --url http://127.0.0.1:8080 --token … sync

``interrupt``: a pipeline speaks, an ``InterruptionFrame`` is queued at a random moment of the speech, and the
time until the twin is silent at the server is the time until its ``interrupted`` event arrives (the interrupt's
trip through the pipeline and the socket, plus the event's trip back) plus the event's ``silent_in_ms`` (from the
interrupt being read to the first silent frame playing out). ``ahead``: a pipeline pushes more speech than the
server queues (``--ahead-s``, default its limit + 20 s) and reports how far ahead it got, how long the client
waited for room, and whether anything was refused. ``sync``: spoken digits are pushed while the server records
the session and two receivers watch it, aiortc's frames in arrival order and ``TwinReceiver``; the mouth onset −
sound onset of each word, in the recording (the server's own alignment) and as each receiver hands them over.
(The server must run on this machine: the recording is read from its recordings directory.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from loguru import logger
from pipecat.frames.frames import EndFrame, InterruptionFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from twincast_pipecat import EspeakTTSService, SpeakingEvent, TwincastVideoService, TwinReceiver
from twincast_pipecat.espeak_tts import espeak

SENTENCE = "The agent keeps talking about the product, its price and why it is worth buying today."


@asynccontextmanager
async def broadcast_pipeline(args: argparse.Namespace,
                             events: asyncio.Queue[SpeakingEvent]) -> AsyncIterator[tuple[PipelineWorker,
                                                                                            TwincastVideoService]]:
    """espeak-ng → TwincastVideoService (broadcast), running until the block ends."""
    service = TwincastVideoService(url=args.url, token=args.token, session=args.session, mode="broadcast")

    @service.event_handler("on_speaking")
    async def on_speaking(_: TwincastVideoService, event: SpeakingEvent) -> None:
        events.put_nowait(event)

    worker = PipelineWorker(Pipeline([EspeakTTSService(), service]), params=PipelineParams(),
                            idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run(), name="bench-pipeline")
    await wait_until(lambda: service.push_client.ready is not None, 30, "connected")
    yield worker, service
    await worker.queue_frame(EndFrame())
    await running


async def wait_until(probe: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``probe`` every 20 ms until it is true; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.02)


async def next_state(events: asyncio.Queue[SpeakingEvent], state: str, timeout_s: float) -> SpeakingEvent:
    """The next speaking event of ``state`` (others are skipped)."""
    while (event := await asyncio.wait_for(events.get(), timeout_s)).state != state:
        pass
    return event


async def interrupts(args: argparse.Namespace) -> dict[str, object]:
    """``--trials`` interrupts at random moments of speech; latencies in ms."""
    events: asyncio.Queue[SpeakingEvent] = asyncio.Queue()
    total, server = [], []
    rng = random.Random(0)
    async with broadcast_pipeline(args, events) as (worker, _):
        for _ in range(args.trials):
            await worker.queue_frames([TTSSpeakFrame(SENTENCE), TTSSpeakFrame(SENTENCE)])
            await next_state(events, "started", 20)
            await asyncio.sleep(rng.uniform(0.2, 2.0))  # a random moment of the speech
            sent_at = time.monotonic()
            await worker.queue_frame(InterruptionFrame())
            event = await next_state(events, "interrupted", 5)
            assert event.silent_in_ms is not None
            total.append((event.received_at_s - sent_at) * 1000 + event.silent_in_ms)
            server.append(event.silent_in_ms)
    return {"trials": args.trials, "frame_to_silent_ms": summary(total), "server_read_to_silent_ms": summary(server)}


async def ahead(args: argparse.Namespace) -> dict[str, object]:
    """Push more speech than the server queues; how far ahead, how long it waited, what was refused."""
    events: asyncio.Queue[SpeakingEvent] = asyncio.Queue()
    async with broadcast_pipeline(args, events) as (worker, service):
        client = service.push_client
        assert client.ready is not None
        target_s = args.ahead_s or client.ready.max_queued_s + 20
        sentence_s = 5.0  # roughly, at espeak-ng's 160 words per minute
        started = time.monotonic()
        await worker.queue_frames([TTSSpeakFrame(SENTENCE) for _ in range(int(target_s / sentence_s) + 1)])
        await wait_until(lambda: client.waits > 0, 120, "the first wait for room")
        first_wait_s, lead_s = time.monotonic() - started, client.pushed_s
        await wait_until(lambda: client.pushed_s >= target_s, 600, "everything pushed")
        done_s = time.monotonic() - started
        peak_s = client.peak_queued_s
        await client.interrupt()
    return {"max_queued_s": client.ready.max_queued_s, "max_lead_s": client.max_lead_s,
            "pushed_before_first_wait_s": round(lead_s, 1), "first_wait_after_s": round(first_wait_s, 2),
            "pushed_s": round(client.pushed_s, 1), "all_pushed_after_s": round(done_s, 1),
            "peak_queued_s": peak_s, "waits": client.waits, "refusals": client.refusals}


DIGITS = "One. Two. Three. Four. Five. Six. Seven. Eight."
RATE_HZ = 48_000


def onsets(times_s: np.ndarray, active: np.ndarray, quiet_s: float) -> np.ndarray:
    """Times at which ``active`` turns on after at least ``quiet_s`` off."""
    found, off_since = [], -np.inf
    for at, on, was in zip(times_s[1:], active[1:], active[:-1], strict=True):
        if on and not was and at - off_since >= quiet_s:
            found.append(at)
        if was and not on:
            off_since = at
    return np.array(found)


def mouth_minus_sound_ms(picture_s: np.ndarray, pictures: list[np.ndarray], sound_s: np.ndarray,
                         sound: np.ndarray) -> list[int]:
    """For each word (sound after 200 ms of quiet), its nearest mouth onset minus its sound onset, in ms."""
    block = RATE_HZ // 100
    count = len(sound) // block
    loudness = np.sqrt(np.mean(sound[: count * block].astype(np.float64).reshape(count, block) ** 2, axis=1))
    sound_on = onsets(sound_s[::block][:count], loudness > 0.1 * loudness.max(), 0.2)
    stack = np.stack(pictures).astype(np.float32)
    before = picture_s < sound_on[0]
    change = np.abs(stack - np.median(stack[before], axis=0)).mean(axis=-1).reshape(len(stack), -1)
    mouth = change[:, np.argsort(change.std(axis=0))[-300:]].mean(axis=1)
    mouth_on = onsets(picture_s, mouth > (mouth.max() + np.median(mouth[before])) / 2, 0.12)
    return [round(1000 * (mouth_on[np.argmin(abs(mouth_on - at))] - at)) for at in sound_on
            if len(mouth_on) and np.min(abs(mouth_on - at)) < 0.2]


async def sync(args: argparse.Namespace) -> dict[str, object]:
    """Mouth − sound onsets in the server's recording, in aiortc's arrival order and from ``TwinReceiver``."""
    arrived: dict[str, list[tuple[float, np.ndarray]]] = {"video": [], "audio": []}
    handed: list[tuple[str, np.ndarray]] = []

    async def drain(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if isinstance(frame, av.VideoFrame):
                arrived["video"].append((now, frame.to_ndarray(format="rgb24")))
            elif isinstance(frame, av.AudioFrame):
                arrived["audio"].append((now, frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(1)))

    async def on_picture(rgb: np.ndarray, pts_ns: int) -> None:
        handed.append(("picture", rgb))

    async def on_sound(pcm: bytes, rate_hz: int, pts_ns: int) -> None:
        handed.append(("sound", np.frombuffer(pcm, np.int16)))

    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    drains: list[asyncio.Task[None]] = []
    peer.on("track", lambda track: drains.append(asyncio.create_task(drain(track))))
    peer.addTransceiver("video", direction="recvonly")
    peer.addTransceiver("audio", direction="recvonly")
    await peer.setLocalDescription(await peer.createOffer())
    receiver = TwinReceiver(args.url, session=args.session, sample_rate_hz=RATE_HZ, on_picture=on_picture,
                            on_sound=on_sound, spawn=lambda coroutine, name: asyncio.create_task(coroutine))
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    session = {"session": args.session} if args.session else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{args.url}/whep", data=peer.localDescription.sdp, params=session,
                             headers={"Content-Type": "application/sdp"}) as response:
            answer, viewer = await response.text(), response.headers["Location"]
        await peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await receiver.connect(http)
        async with http.post(f"{args.url}/api/outputs", json={"kind": "record", "path": "bench-sync.mp4",
                                                              **session}) as response:
            output = await response.json()
        await asyncio.sleep(1.5)  # idle pictures before the first word
        samples, rate_hz = await espeak(DIGITS, "en-us", 160)
        async with http.ws_connect(f"{args.url}/api/push", params=session) as socket:
            await socket.receive_json()
            await socket.send_json({"type": "start", "sample_rate": rate_hz})
            await socket.send_bytes(samples.tobytes())
            await socket.send_json({"type": "end"})
        await asyncio.sleep(len(samples) / rate_hz + 2.0)  # said, and come back
        async with http.delete(f"{args.url}/api/outputs/{output['id']}"):
            pass
        async with http.delete(f"{args.url}{viewer}"):
            pass
        await receiver.close(http)
    await peer.close()
    for task in drains:
        task.cancel()
    recording = output["target"]
    with av.open(recording) as container:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    with av.open(recording) as container:
        blocks = [(float(f.time), f.to_ndarray().mean(axis=0)) for f in container.decode(audio=0)]
    os.remove(recording)

    def timeline(blocks: list[tuple[float, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([at + np.arange(len(x)) / RATE_HZ for at, x in blocks]),
                np.concatenate([x for _, x in blocks]))

    results: dict[str, object] = {}
    for name, pictures, sound in (("recording", frames, blocks),
                                  ("aiortc_arrival", arrived["video"], arrived["audio"])):
        sound_s, samples_all = timeline(sound)
        results[name] = mouth_minus_sound_ms(np.array([at for at, _ in pictures]), [p for _, p in pictures],
                                             sound_s, samples_all)
    at_sample, picture_s, pictures_handed, sound_handed = 0, [], [], []
    for kind, data in handed:
        if kind == "sound":
            sound_handed.append(data)
            at_sample += len(data)
        else:
            pictures_handed.append(data)
            picture_s.append(at_sample / RATE_HZ)
    sound_all = np.concatenate(sound_handed).astype(np.float64)
    results["twin_receiver"] = mouth_minus_sound_ms(np.array(picture_s), pictures_handed,
                                                    np.arange(len(sound_all)) / RATE_HZ, sound_all)
    return {name: {"onsets_ms": value, "median_ms": float(np.median(value))} for name, value in results.items()
            if isinstance(value, list) and value}


def summary(values: list[float]) -> dict[str, float]:
    """p50, p90 and max, rounded to 0.1."""
    return {"p50": round(float(np.percentile(values, 50)), 1), "p90": round(float(np.percentile(values, 90)), 1),
            "max": round(max(values), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["interrupt", "ahead", "sync"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token")
    parser.add_argument("--session")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--ahead-s", type=float, help="seconds of speech to push (default: the queue limit + 20)")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    run = {"interrupt": interrupts, "ahead": ahead, "sync": sync}[args.what]
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
