"""The render worker's stage timings (queue wait, stacking, engine call, paste-backs) with the tiny renderer and real
paste-backs into the tiny twin's base frames."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np

from model.render_inputs import RenderInputs
from stream.render_worker import RenderedFrame, RenderJob, RenderWorker
from stream.stats import WorkerStats
from tests.stream.tiny_twin import TinyRenderer, tiny_assets

STAGES = ("queue_wait", "stack", "engine", "paste")
LATE_BY_S = 0.05  # the second session's job follows the first by this much; the worker gathers for both


def _run_batches(ticks: int) -> tuple[WorkerStats, list[RenderedFrame]]:
    """Two sessions feeding one tiny engine for ``ticks`` ticks, the second's job ``LATE_BY_S`` after the first's;
    returns the worker's stats and the frames delivered."""
    renderer = TinyRenderer()
    assets = tiny_assets()
    rng = np.random.default_rng(0)
    inputs = RenderInputs(masked_crop=assets.masked_crops[0], reference=assets.reference,
                          mel=rng.normal(size=(80, 16)).astype(np.float32),
                          noise=rng.normal(size=renderer.noise_shape).astype(np.float32))._asdict()

    async def run() -> tuple[WorkerStats, list[RenderedFrame]]:
        worker = RenderWorker({"tiny": renderer}, asyncio.get_running_loop(),  # type: ignore[dict-item]
                              max_batch=4, gather_s=1.0)
        worker.attach("tiny")
        worker.attach("tiny")
        delivered: list[RenderedFrame] = []
        arrived = asyncio.Event()

        def deliver(frame: RenderedFrame) -> None:
            delivered.append(frame)
            arrived.set()

        async def delivered_count(count: int) -> None:
            while len(delivered) < count:  # deliveries run on this loop, so nothing lands between check and clear
                arrived.clear()
                await arrived.wait()

        def job(session: str, tick: int) -> RenderJob:
            def paste_back(face: np.ndarray) -> Any:
                return assets.compose_i420(tick % assets.base_count, face)

            return RenderJob(session, tick, 0, "tiny", inputs, paste_back, deliver, lambda generation: True)

        worker.start()
        try:
            for tick in range(ticks):
                worker.submit(job("a", tick))
                await asyncio.sleep(LATE_BY_S)
                worker.submit(job("b", tick))
                await asyncio.wait_for(delivered_count(2 * (tick + 1)), 30)  # one tick's batch at a time
        finally:
            worker.stop()
        return worker.stats(), delivered

    return asyncio.run(run())


def test_the_worker_reports_each_stage_of_its_batches() -> None:
    stats, delivered = _run_batches(ticks=3)
    assert stats["calls"] == 3 and stats["mean_batch"] == 2.0  # each tick's two jobs shared one engine call
    assert all(frame.payload.shape == (96 * 3 // 2, 96) for frame in delivered)  # pasted into 96² frames, I420
    p50s: dict[str, float] = {}
    for stage in STAGES:
        p50, p99 = stats.get(f"{stage}_ms_p50"), stats.get(f"{stage}_ms_p99")
        assert isinstance(p50, float) and isinstance(p99, float), (stage, p50, p99)
        assert math.isfinite(p99) and 0.0 <= p50 <= p99, (stage, p50, p99)
        p50s[stage] = p50
    assert p50s["engine"] > 0.0  # a real forward pass of the tiny renderer
    assert p50s["paste"] > 0.0  # two real paste-backs and I420 conversions per batch
    # the oldest job of each batch waited for the other session's, submitted LATE_BY_S later
    assert p50s["queue_wait"] >= 1000 * LATE_BY_S * 0.9


def test_a_worker_that_rendered_nothing_reports_no_stage_timings() -> None:
    async def run() -> WorkerStats:
        worker = RenderWorker({}, asyncio.get_running_loop(), max_batch=4)
        return worker.stats()

    stats = asyncio.run(run())
    assert stats["calls"] == 0 and stats["mean_batch"] is None
    assert all(stats.get(f"{stage}_ms_p50", "absent") is None for stage in STAGES)
