"""Measure TwincastVideoService against a running twincast server (numbers for docs/avatar-protocol.md).

    .venv-pipecat/bin/python integrations/pipecat/bench.py --url http://127.0.0.1:8080 --token … interrupt
    .venv-pipecat/bin/python integrations/pipecat/bench.py --url http://127.0.0.1:8080 --token … ahead

``interrupt``: a pipeline speaks, an ``InterruptionFrame`` is queued at a random moment of the speech, and the
time until the twin is silent at the server is the time until its ``interrupted`` event arrives (the interrupt's
trip through the pipeline and the socket, plus the event's trip back) plus the event's ``silent_in_ms`` (from the
interrupt being read to the first silent frame playing out). ``ahead``: a pipeline pushes more speech than the
server queues (``--ahead-s``, default its limit + 20 s) and reports how far ahead it got, how long the client
waited for room, and whether anything was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
from loguru import logger
from pipecat.frames.frames import EndFrame, InterruptionFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from twincast_pipecat import EspeakTTSService, SpeakingEvent, TwincastVideoService

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


def summary(values: list[float]) -> dict[str, float]:
    """p50, p90 and max, rounded to 0.1."""
    return {"p50": round(float(np.percentile(values, 50)), 1), "p90": round(float(np.percentile(values, 90)), 1),
            "max": round(max(values), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["interrupt", "ahead"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token")
    parser.add_argument("--session")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--ahead-s", type=float, help="seconds of speech to push (default: the queue limit + 20)")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    print(json.dumps(asyncio.run(interrupts(args) if args.what == "interrupt" else ahead(args))))


if __name__ == "__main__":
    main()
