import asyncio

import numpy as np
import pytest

from stream.audio_queue import SILENCE, AudioQueue, StreamChunker, prepare_chunks
from stream.clock import MediaClock
from stream.events import Tally
from stream.pose import LoopPose, PoseController, StillPose
from tests.stream.manual_clock import ManualTime
from twincast.errors import InputError, PayloadTooLargeError


def test_deadlines_are_absolute_and_do_not_drift() -> None:
    time = ManualTime()
    clock = time.clock()
    assert clock.deadline(0) == clock.origin
    assert clock.deadline(90_000) == pytest.approx(clock.origin + 3600.0)  # one hour later, exactly
    time.advance_to(clock.origin + 0.0399)
    assert clock.frame_at() == 0
    time.advance_to(clock.origin + 0.04)
    assert clock.frame_at() == 1


def test_sleep_until_waits_on_the_injected_clock() -> None:
    async def scenario() -> list[int]:
        time = ManualTime()
        clock = time.clock()
        woke: list[int] = []

        async def sleeper(index: int) -> None:
            await clock.sleep_until(clock.deadline(index))
            woke.append(index)

        tasks = [asyncio.ensure_future(sleeper(i)) for i in (3, 1, 2)]
        await asyncio.sleep(0)
        time.advance_to(clock.deadline(2))
        await asyncio.sleep(0)
        assert sorted(woke) == [1, 2]
        time.advance_to(clock.deadline(3))
        await asyncio.gather(*tasks)
        return woke

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_clocks_on_one_grid_tick_together() -> None:
    time = ManualTime()
    grid = time.now()
    first = MediaClock(25, now=time.now, sleep=time.sleep, grid=grid)
    time.advance_to(grid + 1.013)  # a second session starts 1.013 s later, mid-period
    second = MediaClock(25, now=time.now, sleep=time.sleep, grid=grid)
    assert first.origin == grid
    assert second.origin == pytest.approx(grid + 1.04)  # the next grid instant, never one in the past
    assert second.deadline(0) == pytest.approx(first.deadline(26))
    time.advance_to(grid + 2.0)  # exactly on the grid: starts now
    assert MediaClock(25, now=time.now, sleep=time.sleep, grid=grid).origin == pytest.approx(grid + 2.0)


def test_real_clock_sleep_returns_at_once_when_late() -> None:
    clock = MediaClock(25)
    started = clock.now()
    asyncio.run(clock.sleep_until(clock.deadline(-5)))
    assert clock.now() - started < 0.1  # a past deadline does not wait (a wait would be ≥ 0.2 s late)
    woke = clock.now()
    asyncio.run(clock.sleep_until(woke + 0.05))
    assert clock.now() - woke >= 0.049  # and a future one does


def test_loop_pose_ping_pongs_without_a_jump() -> None:
    pose = LoopPose(4)
    sequence = [pose.base_index(n) for n in range(10)]
    assert sequence == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert max(abs(a - b) for a, b in zip(sequence, sequence[1:], strict=False)) == 1
    pose.continue_from(2, 100)
    assert [pose.base_index(n) for n in (100, 101, 102)] == [2, 3, 2]
    assert StillPose(4, 2).base_index(1234) == 2


def _poses(count: int) -> np.ndarray:
    """Base frames whose roll sweeps from -5 to +5 degrees."""
    return np.stack([np.zeros(count), np.zeros(count), np.linspace(-5, 5, count)], axis=1).astype(np.float32)


def test_scripted_pose_picks_the_nearest_base_frame_and_returns_to_the_loop_smoothly() -> None:
    controller = PoseController(_poses(11))
    for n in range(3):
        controller.base_index(n)
    controller.script(0.0, 0.0, 4.0)
    assert controller.base_index(3) == 9  # roll +4 is base frame 9
    controller.set_mode("loop")
    resumed = [controller.base_index(n) for n in (4, 5, 6)]
    assert resumed == [10, 9, 8] or resumed == [9, 10, 9]  # continues from the frame on screen, no jump
    assert abs(resumed[0] - 9) <= 1
    with pytest.raises(InputError, match="pose mode 'dance'"):
        controller.set_mode("dance")


def test_webcam_pose_follows_and_falls_back_when_lost() -> None:
    now = [0.0]
    controller = PoseController(_poses(11), now=lambda: now[0])
    for step in range(20):
        now[0] = step * 0.04
        controller.webcam((0.0, 0.0, -5.0))
    assert controller.base_index(20) == 0 and controller.mode == "webcam"
    now[0] += 2.0  # no webcam frames for two seconds
    assert controller.base_index(21) in (0, 1)  # back on the loop, from the frame on screen
    assert controller.mode == "loop" and controller.fallbacks == 1


def test_audio_queue_refuses_what_does_not_fit_and_keeps_what_is_queued() -> None:
    queue = AudioQueue(max_frames=50)
    one_second = np.ones(22050, np.float32) * 0.1
    assert queue.extend(prepare_chunks(one_second, 22050)) == 25
    with pytest.raises(PayloadTooLargeError, match="does not fit"):
        queue.extend(prepare_chunks(np.ones(2 * 22050, np.float32), 22050))
    assert len(queue) == 25
    chunk = queue.pop()
    assert chunk.speech and chunk.playback.shape == (1920,) and chunk.features.shape == (640,)
    assert queue.clear() == 24
    assert queue.pop() is SILENCE


def test_live_audio_never_builds_up_latency() -> None:
    queue = AudioQueue(max_frames=500, max_live_frames=8)
    dropped = queue.extend_live(prepare_chunks(np.ones(22050, np.float32) * 0.1, 22050))
    assert len(queue) == 8 and dropped == 17


def test_live_audio_never_drops_queued_speech() -> None:
    # A script line cued while the microphone is on is spoken whole; the live voice behind it keeps its newest 8.
    queue = AudioQueue(max_frames=500, max_live_frames=8)
    line = prepare_chunks(np.full(22050, 0.2, np.float32), 22050)  # 25 frames of queued speech
    queue.extend(line)
    live = prepare_chunks(np.full(22050, 0.1, np.float32), 22050)
    dropped = queue.extend_live(live[:10]) + queue.extend_live(live[10:])
    assert dropped == 17 and queue.dropped_live == 17 and len(queue) == 25 + 8
    played = [queue.pop() for _ in range(33)]
    assert all(a is b for a, b in zip(played[:25], line, strict=True))  # the line, whole and first
    assert all(a is b for a, b in zip(played[25:], live[17:], strict=True))  # then the newest live audio
    assert queue.pop() is SILENCE
    queue.extend_live(live[:3])  # what was popped no longer counts against the live limit
    assert len(queue) == 3


def test_tally_announces_the_first_at_once_and_sums_the_rest_per_interval() -> None:
    announced: list[tuple[float, int]] = []

    async def run() -> float:
        loop = asyncio.get_running_loop()
        second = asyncio.Event()

        def announce(count: int) -> None:
            announced.append((loop.time(), count))
            if len(announced) == 2:
                second.set()

        tally = Tally(announce, every_s=0.2)
        started = loop.time()
        tally.add()
        for _ in range(50):
            tally.add(2)
        await asyncio.wait_for(second.wait(), 5)
        tally.add()  # within the next interval: held back ...
        tally.close()  # ... and dropped on close, never announced late
        await asyncio.sleep(0.3)
        return started

    started = asyncio.run(run())
    assert [count for _, count in announced] == [1, 100]
    assert announced[0][0] - started < 0.05 and announced[1][0] - started >= 0.19


def test_stream_chunker_matches_whole_utterance_resampling() -> None:
    rate = 16_000
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
    chunker = StreamChunker(rate)
    chunks = []
    for start in range(0, tone.size, 333):  # awkward packet sizes
        chunks += chunker.feed(tone[start:start + 333])
    chunks += chunker.flush()
    assert len(chunks) == 50  # exactly 2 s of frames
    streamed = np.concatenate([c.playback for c in chunks])
    whole = np.concatenate([c.playback for c in prepare_chunks(tone, rate)])
    middle = slice(4800, 90_000)
    assert np.abs(streamed[middle] - whole[middle]).max() < 0.02  # same samples, no clicks at packet edges
    features = np.concatenate([c.features for c in chunks])
    assert features[1600:30_000].std() == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    with pytest.raises(InputError, match="sample_rate 4000"):
        StreamChunker(4000)
