import asyncio

import numpy as np
import pytest

from stream.audio_queue import SILENCE, AudioQueue, prepare_chunks
from stream.clock import MediaClock
from stream.pose import LoopPose, StillPose, make_pose_driver
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


def test_real_clock_sleep_returns_at_once_when_late() -> None:
    clock = MediaClock(25)
    asyncio.run(clock.sleep_until(clock.deadline(-5)))


def test_loop_pose_ping_pongs_without_a_jump() -> None:
    pose = LoopPose(4)
    sequence = [pose.base_index(n) for n in range(10)]
    assert sequence == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert max(abs(a - b) for a, b in zip(sequence, sequence[1:], strict=False)) == 1
    assert StillPose(4, 2).base_index(1234) == 2
    with pytest.raises(InputError, match="unknown pose driver"):
        make_pose_driver("dance", 4)


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
