"""Two minutes of the soak (``bench.soak``, whose hour on the demo twin is in RELIABILITY.md): the tiny chain's
twin with speech every 5 s, a viewer that stays, a viewer that joins and leaves every 30 s, an RTMP push to a
local nginx-rtmp and a recording; the soak's bounds asserted on what it recorded.

The bounds are wide (this runs on shared two-core machines, beside other work) but each fails on a real fault: a
leak of a few hundred KB a second, a stall, a renderer that falls behind, speech whose mouth and sound come apart
or drift, an RTMP push that died, a recording that is not finished or does not play.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from types import TracebackType

import pytest

from bench.soak import SoakPlan, run_soak
from bench.soak_plot import STALL_FPS, draw
from tests.helpers import ServerProcess, wait_until

# RSS growth over the second of the two minutes. Measured with this test's load on the development VM (2 cores,
# load average 6-20 from other work meanwhile), 17 runs: 2.2 to 12.7 MB, median 6.9 — the end of the warm-up
# (each viewer's first joins leave the allocator a few MB larger; the hour on the demo levels off after its first
# minutes, RELIABILITY.md). The bound is twice the largest: a leak of 400 KB/s (a 256² RGB frame every half
# second) crosses it.
RSS_GROWTH_LAST_MINUTE_MB = 25.0
# Late or repeated frames, of all: measured 1-28 % (the most with the machine's load average at 20 on 2 cores). A
# renderer that cannot keep up is late on nearly every frame.
FAULTY_FRAMES_SHARE = 0.5
# Lip sync is judged on the utterances rendered on time (no frame repeated around the push, ``mark_on_time``): a
# starved CPU holds the mouth back by up to a second and more, which the bounds above judge. On time, the offset
# (mouth − sound at the aiortc viewer, whose audio buffer holds 80 ms) measured -108..-29 ms in 9 runs.
OFFSET_BOUND_MS = 300.0
DRIFT_BOUND_MS = 40.0  # the first on-time utterances' offset vs the last ones' (medians of up to four)
MIN_ON_TIME = 3  # fewer on time: the machine starved the server all along (seen once in 10 runs, at load 16.5)


def test_two_minute_soak_keeps_its_bounds(pack: Path, artifact: Path, tmp_path: Path) -> None:
    plan = SoakPlan(minutes=2.0, speak_every_s=5.0)  # twice the hour's rate: more utterances to judge lip sync on
    report = run_soak(["serve", "--avatar", str(pack), "--model", str(artifact)], pack, plan, tmp_path)
    summary, series = report["summary"], report["series"]
    print(json.dumps(summary), json.dumps(report["utterances"]))  # the figures, for whoever reads a failure
    draw(report, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 10_000

    # Memory: no growth to speak of once warmed up.
    assert summary["rss_growth_last_minute_mb"] < RSS_GROWTH_LAST_MINUTE_MB, summary

    # No stall: every 10 s window keeps at least 12 frames/s, rendered at the server and received by the viewer.
    assert len(report["server_fps_windows"]) == 12 and len(report["received_fps_windows"]) == 12
    assert min(report["server_fps_windows"]) >= STALL_FPS, report["server_fps_windows"]
    assert min(report["received_fps_windows"]) >= STALL_FPS, report["received_fps_windows"]
    assert summary["late_frames"] <= FAULTY_FRAMES_SHARE * summary["frames"], summary
    assert summary["repeated_frames"] <= FAULTY_FRAMES_SHARE * summary["frames"], summary

    # Viewers came and went: four joined and left, and the server counts only the one that stayed.
    assert summary["churn_viewers"] == 4 and report["churn"]["errors"] == [], report["churn"]
    assert max(series["viewers"]) == 2 and report["after_load"]["viewers"] == 1, series["viewers"]

    # The RTMP push is live at the end and the ingest kept receiving through the last minute.
    minute_ago = next(i for i, t in enumerate(series["t_s"]) if t >= series["t_s"][-1] - 60)
    assert summary["rtmp_at_end"] == "live", report["outputs"]["rtmp"]
    assert series["ingest_mb"][-1] - series["ingest_mb"][minute_ago] > 0.2, series["ingest_mb"]

    # The recording grew all along, was finished under its name, and plays: h264 + aac, as long as the soak,
    # its last seconds decode without an error.
    assert series["recording_mb"][-1] - series["recording_mb"][minute_ago] > 0.2, series["recording_mb"]
    recording = report["outputs"]["recording"]
    assert report["outputs"]["record"]["state"] == "stopped" and recording["exists"], report["outputs"]
    assert (recording["video"], recording["audio"]) == ("h264", "aac"), recording
    assert 60 * plan.minutes - 2 <= recording["duration_s"] <= 60 * plan.minutes + 30, recording  # + start, stop
    assert recording["tail_decodes"], recording

    # Lip sync: every utterance was pushed; each one rendered on time was found (its mouth moved and its sound
    # came), none of them far off, and no drift from the first to the last.
    assert summary["utterances"] >= 20 and report["speech"]["errors"] == [], report["speech"]
    assert summary["on_time_unmeasured"] == 0, report["utterances"]
    on_time = [u["offset_ms"] for u in report["utterances"] if u["on_time"]]
    if len(on_time) < MIN_ON_TIME:
        pytest.skip(f"lip sync not judged: the machine starved the server all along ({len(on_time)} of "
                    f"{summary['utterances']} utterances rendered on time, {summary['repeated_frames']} frames "
                    f"repeated, load average {summary['load_1min_mean']})")
    assert all(abs(offset) <= OFFSET_BOUND_MS for offset in on_time), report["utterances"]
    assert abs(summary["drift_ms"]) <= DRIFT_BOUND_MS, (summary["drift_ms"], report["utterances"])


class StalledIngest:
    """A TCP listener on loopback that accepts connections and never answers: an RTMP ingest that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        """An RTMP URL that leads here."""
        return f"rtmp://127.0.0.1:{self.listener.getsockname()[1]}/live/stalled-key"

    def _accept(self) -> None:
        while True:
            try:
                self.connections.append(self.listener.accept()[0])
            except OSError:  # closed
                return

    def __enter__(self) -> StalledIngest:
        self._accepting.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.listener.close()
        for connection in self.connections:  # the pusher's read ends: a frozen server can shut down
            connection.close()


def test_a_stalled_rtmp_ingest_does_not_freeze_the_server(pack: Path, artifact: Path) -> None:
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       "-q") as server, StalledIngest() as ingest:  # the ingest goes first: the server can stop
        wait_until(lambda: server.get("/api/stats", timeout=5)[1]["sessions"]["default"]["fps"] >= STALL_FPS, 30,
                   what="the server rendering at its pace")
        status, output = server.post("/api/outputs", {"kind": "rtmp", "url": ingest.url}, timeout=10)
        assert status == 201, output
        # the output's reachability probe connects (and hangs up) first, then the pushing child process
        wait_until(lambda: len(ingest.connections) >= 2, 15, what="the push connects to the ingest")
        for _ in range(3):  # the server keeps answering and rendering while the push waits on the ingest ...
            status, stats = server.get("/api/stats", timeout=5)
            assert status == 200 and stats["sessions"][stats["default_session"]]["fps"] >= STALL_FPS, stats
        # ... and the push gives up on an ingest that does not answer (within 10 s), says so, and retries.
        pushed = wait_until(lambda: (o := server.get("/api/outputs", timeout=5)[1]["outputs"][0])["reconnects"] >= 1
                            and o, 30, every_s=1.0, what="the push gives up on a silent ingest")
        assert pushed["state"] == "reconnecting" and "did not answer within 10 s" in pushed["error"], pushed
        assert "stalled-key" not in str(pushed)  # the stream key stays masked
        status, stats = server.get("/api/stats", timeout=5)
        assert status == 200 and stats["sessions"][stats["default_session"]]["fps"] >= STALL_FPS, stats
