"""The agent push protocol in-process (unit tier): speaking events with their frame times on a hand-driven clock,
the status reply an agent paces itself by, versions, and the protocol document against the code."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatar.speech import Voice
from stream import push
from stream.push import PushProtocol, protocol_version
from stream.render_worker import RenderWorker
from stream.session import TwinSession
from stream.tts import EspeakTTS
from tests.stream.manual_clock import ManualTime
from tests.stream.tiny_twin import tiny_twin

RATE_HZ = 16_000
PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "avatar-protocol.md"


def pcm(seconds: float) -> bytes:
    """A 16-bit tone of ``seconds`` at ``RATE_HZ``."""
    samples = 0.3 * np.sin(np.arange(int(seconds * RATE_HZ)) * 0.2)
    return (samples * 32767).astype("<i2").tobytes()


class Rig:
    """A tiny session on a hand-driven clock (its render worker never starts: only the timeline matters here),
    a version-2 push connection listening to it, and the messages it would send, each with the clock time."""

    def __init__(self, version: int = 2) -> None:
        self.manual = ManualTime()
        worker = RenderWorker({}, asyncio.get_running_loop(), max_batch=4)
        self.session = TwinSession("s", tiny_twin(), worker, self.manual.clock(), tts=EspeakTTS(Voice()),
                                   pose_mode="still", lead_frames=2, noise=np.zeros((3, 64, 64), np.float32),
                                   max_queued_frames=250,
                                   spawn=lambda coroutine, name: asyncio.ensure_future(coroutine))
        self.protocol = PushProtocol(self.session, version)
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(push.OUTBOX_MESSAGES)
        self.protocol.listen(self.outbox)
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.step = 0
        self.producer = asyncio.ensure_future(self.session.run())

    async def run_frames(self, frames: int) -> None:
        """Move the clock ``frames`` ticks on, letting the producer run at each."""
        for _ in range(frames):
            self.manual.advance_to(self.session.clock.deadline(self.step))
            self.step += 1
            for _ in range(3):
                await asyncio.sleep(0)
            self.collect()

    def collect(self) -> None:
        while not self.outbox.empty():
            self.sent.append((self.manual.t, self.outbox.get_nowait()))

    def speak(self, seconds: float) -> list[dict[str, Any]]:
        replies = self.protocol.on_text('{"type": "start", "sample_rate": 16000}')
        replies += self.protocol.on_binary(pcm(seconds))
        return replies + self.protocol.on_text('{"type": "end"}')

    def events(self) -> list[dict[str, Any]]:
        return [message for _, message in self.sent if message["type"] == "speaking"]

    def close(self) -> None:
        self.protocol.close()
        self.producer.cancel()


def test_speech_is_announced_when_its_first_and_last_frames_play_out_with_their_frame_times() -> None:
    async def run() -> tuple[Rig, list[dict[str, Any]], int]:
        rig = Rig()
        await rig.run_frames(5)
        replies = rig.speak(0.4)  # 10 frames
        first_speech = rig.step  # the next tick takes the first queued chunk as its frame's audio
        await rig.run_frames(30)
        rig.close()
        return rig, replies, first_speech

    rig, replies, first_speech = asyncio.run(run())
    assert [r["type"] for r in replies] == ["started", "queued"] and replies[1]["seconds"] == 0.4
    started, stopped = rig.events()
    assert started == {"type": "speaking", "state": "started", "frame_index": first_speech,
                       "pts_s": first_speech / 25, "generation": 0}
    assert stopped["state"] == "stopped" and stopped["frame_index"] == first_speech + 10 and stopped["frames"] == 10
    clock, delay = rig.session.clock, rig.session.delay_frames
    times = {message.get("state"): at for at, message in rig.sent}
    assert times["started"] == pytest.approx(clock.deadline(first_speech + delay))  # as that frame plays out
    assert times["stopped"] == pytest.approx(clock.deadline(first_speech + 10 + delay))


def test_an_interrupt_is_announced_at_once_with_the_first_silent_frame_and_no_stop_follows() -> None:
    async def run() -> tuple[Rig, int, list[dict[str, Any]]]:
        rig = Rig()
        await rig.run_frames(3)
        rig.speak(2.0)
        await rig.run_frames(20)
        playing = rig.session.playout_index()
        replies = rig.protocol.on_text('{"type": "interrupt"}')
        rig.collect()
        await rig.run_frames(20)
        after = rig.protocol.on_binary(pcm(0.2))  # in flight from the cut-off utterance: ignored
        await rig.run_frames(10)
        rig.close()
        return rig, playing, replies + after

    rig, playing, replies = asyncio.run(run())
    states = [event["state"] for event in rig.events()]
    assert states == ["started", "interrupted"]
    started, interrupted = rig.events()
    assert interrupted["frame_index"] == playing + 1 and interrupted["generation"] == 1
    assert interrupted["frames"] == playing + 1 - started["frame_index"]
    assert interrupted["dropped_s"] > 1.0
    assert 0 < interrupted["silent_in_ms"] <= 40.0  # the next frame to play out is silent
    assert [r["type"] for r in replies] == ["interrupted"]
    assert rig.protocol.dropped_packets == 1


def test_an_interrupt_by_someone_else_reaches_the_agent_and_its_pcm_waits_for_a_new_start() -> None:
    async def run() -> tuple[Rig, dict[str, Any], dict[str, Any]]:
        rig = Rig()
        rig.speak(1.0)
        await rig.run_frames(rig.session.delay_frames - 1)  # queued, the first frames taken, none heard yet
        rig.session.interrupt()  # the operator's /api/interrupt, a script line cued "now"
        rig.collect()
        status = rig.protocol.on_text('{"type": "status"}')[0]
        rig.protocol.on_text('{"type": "start", "sample_rate": 16000}')
        rearmed = rig.protocol.status()
        rig.close()
        return rig, status, rearmed

    rig, status, rearmed = asyncio.run(run())
    assert [event["state"] for event in rig.events()] == ["interrupted"]  # it had not started playing yet
    assert rig.events()[0]["frames"] == 0 and rig.events()[0]["dropped_s"] > 0.5
    assert status["accepting_pcm"] is False and status["generation"] == 1
    assert rearmed["accepting_pcm"] is True


def test_status_tells_the_agent_how_much_is_queued_against_the_limit() -> None:
    async def run() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        rig = Rig()
        hello = rig.protocol.hello()
        rig.speak(6.0)
        status = rig.protocol.on_text('{"type": "status"}')[0]
        rig.protocol.on_text('{"type": "start", "sample_rate": 16000}')
        over = rig.protocol.on_binary(pcm(5.0))  # 6 + 5 s > the 10 s this session queues
        rig.close()
        return hello, status, over

    hello, status, over = asyncio.run(run())
    assert hello["protocol"] == 2 and hello["max_queued_s"] == 10.0 and hello["fps"] == 25
    assert status["type"] == "status" and status["queued_s"] == 6.0 and status["max_queued_s"] == 10.0
    assert status["speaking"] is True and status["accepting_pcm"] is True
    assert over[0]["type"] == "error" and "does not fit" in over[0]["error"]


def test_version_1_sends_nothing_unasked() -> None:
    async def run() -> Rig:
        rig = Rig(version=1)
        rig.speak(0.4)
        await rig.run_frames(25)
        rig.protocol.on_text('{"type": "interrupt"}')
        await rig.run_frames(3)
        rig.close()
        return rig

    rig = asyncio.run(run())
    assert rig.sent == []
    assert rig.session.listeners("playout") == [] and rig.session.listeners("interrupted") == []


def test_versions_and_unknown_messages_are_named() -> None:
    assert protocol_version(None) == 1 and protocol_version("2") == 2
    with pytest.raises(Exception, match=r"version '3' is not one of \[1, 2\]"):
        protocol_version("3")

    async def run() -> list[dict[str, Any]]:
        rig = Rig()
        reply = rig.protocol.on_text('{"type": "sing"}')
        rig.close()
        assert rig.session.listeners("playout") == []  # close() stopped listening
        return reply

    (reply,) = asyncio.run(run())
    assert reply["error"] == "unknown message type 'sing'; expected one of start, end, interrupt, status"


def test_the_protocol_document_lists_exactly_the_messages_the_code_has() -> None:
    text = PROTOCOL_DOC.read_text()

    def listed(heading: str) -> list[str]:
        section = text.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
        return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)

    assert listed("Messages from the agent") == list(push.CLIENT_MESSAGES)
    assert listed("Messages from the server") == list(push.SERVER_MESSAGES)
    assert listed("Speaking states") == list(push.SPEAKING_STATES)
    assert f"version {max(push.PROTOCOL_VERSIONS)}" in text.lower()
