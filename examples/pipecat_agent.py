"""A pipecat voice agent with a twincast face, offline: text lines in, espeak-ng speech (a pipecat TTS service),
the twin speaks it, and the twin's synchronised picture and sound come back into the pipeline and are recorded.

Runs in the pipecat integration's environment (``make pipecat-venv``):

    .venv-pipecat/bin/python examples/pipecat_agent.py --serve .venv/bin/twincast --record agent.mp4
    echo "Hello from my agent." | .venv-pipecat/bin/python examples/pipecat_agent.py --url http://127.0.0.1:8080

``--serve`` starts ``twincast demo`` (the embedded demo twin) for the run; ``--url`` uses a running server (its
operator token from ``--token`` or ``TWINCAST_OPERATOR_TOKEN``). In ``--mode broadcast`` nothing comes back:
watch the twin at the server's player page while the agent speaks. A real agent puts speech recognition and an
LLM before the TTS and a transport (``SmallWebRTCTransport``, Daily, …) after the service; the twincast part is
the same.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from twincast_pipecat import EspeakTTSService, SpeakingEvent, TwincastVideoService

OUT_RATE_HZ = 48_000
FPS = 25
DEMO_LINES = ["Hello! I am a voice agent, and this is my face.",
              "My words come from a text to speech engine inside a pipecat pipeline.",
              "The twin speaks them, and its picture and voice come back into the pipeline."]
RECORDER_QUEUE = 250  # pictures and sound waiting for the encoder thread; beyond it the pipeline waits


class Mp4Recorder(FrameProcessor):
    """Records the pictures and sound that reach it to an MP4 (H.264 + AAC), encoded on a thread of its own, and
    passes every frame on. A picture is placed after the sound that came before it (as pipecat's output
    transport shows a ``sync_with_audio`` picture). Written to a temporary file, renamed when the pipeline ends."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.pictures = 0
        self.sound_s = 0.0
        self._samples = 0
        self._frames: queue.Queue[tuple[str, np.ndarray, int] | None] = queue.Queue(RECORDER_QUEUE)  # blocks
        self._writer: threading.Thread | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Keep pictures and sound; close the file at the end."""
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            width, height = frame.size
            rgb = np.frombuffer(frame.image, np.uint8).reshape(height, width, 3)
            await self._put(("picture", rgb, self._samples))
            self.pictures += 1
        elif isinstance(frame, OutputAudioRawFrame) and frame.sample_rate == OUT_RATE_HZ:
            pcm = np.frombuffer(frame.audio, np.int16)
            await self._put(("sound", pcm, self._samples))
            self._samples += pcm.size
            self.sound_s = self._samples / OUT_RATE_HZ
        elif isinstance(frame, EndFrame):
            await self.finish()
        await self.push_frame(frame, direction)

    async def _put(self, item: tuple[str, np.ndarray, int] | None) -> None:
        if self._writer is None and item is not None:
            self._writer = threading.Thread(target=self._write, args=(item[1].shape,), name="mp4-recorder")
            self._writer.start()
        while self._writer is not None and self._writer.is_alive():  # a failed writer has said why; go on without
            try:
                await asyncio.to_thread(self._frames.put, item, timeout=1.0)
                return
            except queue.Full:
                continue

    async def finish(self) -> None:
        """Flush the encoder and move the file into place."""
        if self._writer is not None:
            await self._put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None

    def _write(self, first_shape: tuple[int, ...]) -> None:
        fd, scratch = tempfile.mkstemp(suffix=".mp4", prefix=".recording-", dir=self.path.parent)
        os.close(fd)
        with av.open(scratch, mode="w") as container:
            height, width = (first_shape[0], first_shape[1]) if len(first_shape) == 3 else (256, 256)
            video = container.add_stream("libx264", rate=FPS)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            audio = container.add_stream("aac", rate=OUT_RATE_HZ)
            audio.layout = "mono"
            last_pts = -1
            while (item := self._frames.get()) is not None:
                kind, data, at_sample = item
                if kind == "picture":  # on the frame grid, at the sound before it (never twice on one frame)
                    picture = av.VideoFrame.from_ndarray(data, format="rgb24").reformat(format="yuv420p")
                    picture.pts = last_pts = max(last_pts + 1, round(at_sample * FPS / OUT_RATE_HZ))
                    picture.time_base = Fraction(1, FPS)
                    container.mux(video.encode(picture))
                else:
                    sound = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
                    sound.sample_rate, sound.pts, sound.time_base = OUT_RATE_HZ, at_sample, Fraction(1, OUT_RATE_HZ)
                    container.mux(audio.encode(sound))
            container.mux(video.encode(None))
            container.mux(audio.encode(None))
        os.chmod(scratch, 0o644)  # mkstemp's file is private; a recording is not
        os.replace(scratch, self.path)


@contextmanager
def demo_server(twincast: str, token: str) -> Iterator[str]:
    """``twincast demo`` on a free loopback port for the duration; yields its URL."""
    process = subprocess.Popen([twincast, "demo", "--port", "0", "--pose", "still", "-q"], text=True,
                               stdout=subprocess.PIPE, env={**os.environ, "TWINCAST_OPERATOR_TOKEN": token})
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("twincast serving "):
                logger.info(line.strip())
                drain = threading.Thread(target=process.stdout.read, name="twincast-stdout", daemon=True)
                drain.start()  # whatever it prints later must not fill the pipe and stall it
                yield line.split()[-1].rstrip("/")
                return
        raise SystemExit(f"{twincast} demo exited ({process.wait()}) before it served")
    finally:
        process.terminate()
        process.wait(timeout=30)


async def run_agent(url: str, token: str | None, args: argparse.Namespace, lines: list[str]) -> None:
    """Speak ``lines`` through the twin at ``url``."""
    tts = EspeakTTSService(voice=args.voice)
    service = TwincastVideoService(url=url, token=token, session=args.session, mode=args.mode)
    recorder = Mp4Recorder(args.record) if args.record and args.mode == "return" else None
    stages: list[FrameProcessor] = [tts, service] + ([recorder] if recorder else [])
    worker = PipelineWorker(Pipeline(stages), params=PipelineParams(audio_out_sample_rate=OUT_RATE_HZ),
                            idle_timeout_secs=None)

    @service.event_handler("on_speaking")
    async def on_speaking(_: TwincastVideoService, event: SpeakingEvent) -> None:
        logger.info(f"twin {event.state} at frame {event.frame_index} ({event.pts_s:.2f} s on its stream)")

    if args.mode == "broadcast":
        logger.info(f"watch the twin at {url}/")
    await worker.queue_frames([TTSSpeakFrame(line) for line in lines] + [EndFrame()])
    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    await runner.run()
    if recorder is not None:
        logger.info(f"recorded {recorder.pictures} pictures and {recorder.sound_s:.1f} s of sound to {args.record}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running twincast server, e.g. http://127.0.0.1:8080")
    where.add_argument("--serve", metavar="TWINCAST", help="start `TWINCAST demo` for the run, e.g. .venv/bin/twincast")
    parser.add_argument("--token", default=os.environ.get("TWINCAST_OPERATOR_TOKEN"), help="operator token (--url)")
    parser.add_argument("--session", help="twincast session (default: the server's)")
    parser.add_argument("--mode", choices=["return", "broadcast"], default="return")
    parser.add_argument("--record", type=Path, help="return mode: record what comes back to this MP4")
    parser.add_argument("--voice", default="en-us", help="espeak-ng voice")
    parser.add_argument("text", nargs="*", help="lines to say (default: stdin's lines, or a short demo)")
    args = parser.parse_args()
    lines = args.text or ([line.strip() for line in sys.stdin if line.strip()] if not sys.stdin.isatty() else [])
    lines = lines or DEMO_LINES
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    if args.serve:
        token = secrets.token_urlsafe(18)
        with demo_server(args.serve, token) as url:
            asyncio.run(run_agent(url, token, args, lines))
    else:
        asyncio.run(run_agent(args.url, args.token, args, lines))


if __name__ == "__main__":
    main()
