"""An RTMP push in a child process: the output's encoded FLV in on stdin, remuxed to the ingest unchanged.

Why a process: FFmpeg connects to an RTMP ingest inside ``avio_open``, which PyAV calls holding the interpreter
lock and without an I/O timeout, so an ingest that accepts the TCP connection and never answers would freeze the
whole server — every session, every viewer, the API. Here only this child waits; the parent (``RtmpPusher``,
on the output's encoder thread) watches it and kills it when it does not connect or stops sending.

Protocol with the parent: the first line on stdin is the ingest URL (not in argv, where any user of the machine
could read the stream key), then the FLV bytes. The child prints ``live`` once the ingest has taken the header,
then ``sent N`` about once a second while packets flow; errors go to stderr, and the exit status is non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import IO

import av

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0  # the ingest must take the header within this
STALL_TIMEOUT_S = 10.0  # and then keep taking packets: no progress this long and the push is restarted
REPORT_EVERY_S = 1.0
_PROBE_OPTIONS = {"probesize": "65536", "analyzeduration": "500000"}  # the FLV header and first packets suffice


def relay(url: str, source: IO[bytes], report: IO[str]) -> int:
    """Remux FLV from ``source`` to ``url``; returns the packets sent. Raises what FFmpeg raises."""
    with av.open(source, mode="r", format="flv", options=_PROBE_OPTIONS) as demuxer, \
            av.open(url, mode="w", format="flv") as muxer:
        streams = {stream.index: muxer.add_stream_from_template(stream)
                   for stream in demuxer.streams if stream.type in ("video", "audio")}
        sent, reported_at = 0, time.monotonic()
        for packet in demuxer.demux():
            if packet.dts is None or packet.stream.index not in streams:
                continue  # the demuxer's flush packet, or a stream the ingest does not take
            packet.stream = streams[packet.stream.index]
            muxer.mux(packet)
            sent += 1
            if sent == 1:
                print("live", file=report, flush=True)
            if time.monotonic() - reported_at >= REPORT_EVERY_S:
                print(f"sent {sent}", file=report, flush=True)
                reported_at = time.monotonic()
    return sent


def main() -> int:
    """The child's entry point: ``python -m stream.rtmp_push`` (the URL and the FLV on stdin)."""
    url = sys.stdin.buffer.readline().decode("utf-8", "replace").strip()
    try:
        relay(url, sys.stdin.buffer, sys.stdout)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        print(str(exc).replace(url, "<ingest>"), file=sys.stderr, flush=True)
        return 1
    return 0


class RtmpPusher:
    """The parent's side: starts the child, hands it the URL, and watches it.

    ``stdin`` is where the encoder writes its FLV. A monitor thread reads the child's reports: ``live`` calls
    ``on_live``; no ``live`` within ``CONNECT_TIMEOUT_S``, or no progress for ``STALL_TIMEOUT_S``, kills the child
    (then the encoder's next write fails and the output reconnects). ``reason`` says why it ended.
    """

    def __init__(self, url: str, on_live: Callable[[], None] | None = None) -> None:
        self._url = url
        self._on_live = on_live
        self.reason: str | None = None
        self._errors: deque[str] = deque(maxlen=20)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "stream.rtmp_push"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=False, start_new_session=True,
        )
        assert self._process.stdin is not None
        self.stdin: IO[bytes] = self._process.stdin
        self.stdin.write(url.encode() + b"\n")
        self._progress_at = time.monotonic()
        self._live = False
        self._threads = [threading.Thread(target=self._watch, name="twincast-rtmp-watch", daemon=True),
                         threading.Thread(target=self._drain_errors, name="twincast-rtmp-stderr", daemon=True)]
        for thread in self._threads:
            thread.start()

    def _watch(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        reader = threading.Thread(target=self._read_reports, args=(stdout,), daemon=True)
        reader.start()
        started = time.monotonic()
        while self._process.poll() is None:
            now = time.monotonic()
            if not self._live and now - started > CONNECT_TIMEOUT_S:
                self._kill(f"the ingest did not answer within {CONNECT_TIMEOUT_S:.0f} s")
            elif self._live and now - self._progress_at > STALL_TIMEOUT_S:
                self._kill(f"the ingest stopped taking data for {STALL_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        reader.join(1.0)

    def _read_reports(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            self._progress_at = time.monotonic()
            if line.strip() == b"live" and not self._live:
                self._live = True
                if self._on_live is not None:
                    self._on_live()

    def _drain_errors(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        for line in stderr:
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._errors.append(text)

    def _kill(self, reason: str) -> None:
        self.reason = reason
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def failure(self) -> str:
        """Why the push ended: the watchdog's reason, else the child's last error line."""
        if self.reason is not None:
            return self.reason
        errors = [line for line in self._errors if "Some options were not used" not in line]
        return errors[-1] if errors else f"the RTMP push process exited ({self._process.returncode})"

    def close(self, timeout_s: float = 5.0) -> None:
        """Let the child send what it has and end; kill it after ``timeout_s``."""
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._kill("the push did not finish in time")
            self._process.wait()
        for thread in self._threads:
            thread.join(1.0)

    def __enter__(self) -> RtmpPusher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
