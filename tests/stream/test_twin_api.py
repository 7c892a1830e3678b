"""The Twins API on a real server: an uploaded video becomes a job that trains in a worker process, survives a
server restart, and goes live in the running server with its viewers staying connected; uploads it cannot use
are refused by name; a job can be cancelled (integration tier: tiny size, seconds of training)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from avatar.pack import AvatarPack
from stream.whep_client import ReceivedMedia, pull
from tests.helpers import ServerProcess, wait_until

TINY_BUDGET = "40s"


def serve(pack: Path, artifact: Path, twins_dir: Path, **env: str) -> ServerProcess:
    """``twincast serve`` of the tiny demo twin (session "default"), making twins into ``twins_dir``."""
    return ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                         env={"TWINCAST_SERVE_TWINS_DIR": str(twins_dir), "TWINCAST_SERVE_TWIN_PREVIEW_EVERY_S": "3",
                              "TWINCAST_SERVE_OPERATOR_RATE_PER_S": "1000", "TWINCAST_SERVE_OPERATOR_BURST": "1000",
                              **env})


def upload(server: ServerProcess, video: Path | bytes, **fields: str) -> requests.Response:
    """POST /api/twins with the video as a file and the given form fields."""
    payload = video.read_bytes() if isinstance(video, Path) else video
    return requests.post(server.url + "/api/twins", headers=server.auth, data=fields,
                         files={"video": ("clip.mp4", payload, "video/mp4")}, timeout=60)


def job_state(server: ServerProcess, job_id: str) -> dict[str, Any]:
    status, job = server.get(f"/api/jobs/{job_id}")
    assert status == 200, job
    return dict(job)


class Watcher:
    """A WHEP viewer that stays connected in a thread of its own until ``stop``."""

    def __init__(self, url: str) -> None:
        self._stop = threading.Event()
        self.media: ReceivedMedia | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._url = url
        self._thread.start()

    def _run(self) -> None:
        async def until_stopped() -> None:
            await asyncio.get_running_loop().run_in_executor(None, self._stop.wait)

        try:
            self.media = asyncio.run(pull(self._url, 0.5, during=until_stopped, keep_video=400))
        except BaseException as exc:  # handed to the test's thread in stop()
            self.error = exc

    def stop(self) -> ReceivedMedia:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error
        assert self.media is not None
        return self.media


@pytest.fixture
def twins_dir(tmp_path: Path) -> Path:
    return tmp_path / "twins"


def test_uploads_it_cannot_use_are_refused_by_name(pack: Path, artifact: Path, twins_dir: Path,
                                                   new_person_clip: Path) -> None:
    with serve(pack, artifact, twins_dir, TWINCAST_SERVE_MAX_UPLOAD_BYTES="200000") as server:
        cases = [
            (upload(server, b"not a video at all", name="junk"), 422, "not a readable video"),
            (upload(server, new_person_clip.read_bytes()[:150_000], name="cut", size="tiny"), 422, "clip.mp4"),
            (upload(server, b"\0" * 300_000, name="big"), 413, "max_upload_bytes"),
            (upload(server, b"x", name="../escape"), 400, "name '../escape' must be"),
            (upload(server, b"x", name="ok", size="huge"), 400, "size 'huge' must be one of"),
            (upload(server, b"x", name="ok", budget="15"), 400, "must have units"),
            (upload(server, b"x", name="default"), 400, "exists already"),
            (upload(server, b"x", name="ok", colour="red"), 400, "unknown field 'colour'"),
            (requests.post(server.url + "/api/twins", headers=server.auth, json={"name": "x"}, timeout=30), 400,
             "multipart/form-data"),
        ]
        for response, status, words in cases:
            assert response.status_code == status and words in response.json()["error"], response.text
        assert not [path for path in twins_dir.iterdir() if path.name != ".uploads"] if twins_dir.exists() else True
        assert server.post("/api/twins/nobody/live", {})[0] == 404
        assert server.get("/api/jobs/nothing")[0] == 404
        assert server.delete("/api/jobs/nothing")[0] == 404


def test_a_job_survives_a_restart_then_the_twin_goes_live_without_dropping_the_viewer(
        pack: Path, artifact: Path, twins_dir: Path, new_person_clip: Path) -> None:
    with serve(pack, artifact, twins_dir) as first:
        response = upload(first, new_person_clip, name="hopper", size="tiny", budget=TINY_BUDGET)
        assert response.status_code == 202, response.text
        job = response.json()["job"]
        assert response.headers["Location"] == f"/api/jobs/{job['id']}" and job["state"] == "queued"
        running = wait_until(lambda: _in_stage(first, job["id"], "teacher"), 240, every_s=0.5,
                             what="the job training its teacher")
        assert running["state"] == "running" and 0 < running["progress"] < 1 and running["eta_s"] > 0
        assert [stage["name"] for stage in running["stages"]] == ["enroll", "teacher", "eval", "export"]
    # The server stopped; its worker went with it. A new server finds the job and continues it.
    with serve(pack, artifact, twins_dir) as second:
        again = job_state(second, job["id"])
        assert again["state"] in ("queued", "running")
        done = wait_until(lambda: _ended(second, job["id"]), 480, every_s=1.0, what="the job to finish")
        assert done["state"] == "done", done
        assert "resuming the stored plan after enroll" in (done["plan"] or "")
        assert done["result"]["live_variant"] in ("teacher_2", "student_1", "student_2", "baseline_1")
        assert done["preview"] is not None  # a holdout preview rendered while it trained
        status, listing = second.get("/api/twins")
        hopper = next(twin for twin in listing["twins"] if twin["name"] == "hopper")
        assert hopper["state"] == "ready" and not hopper["loaded"]
        assert set(hopper["files"]) == {"contact_sheet.png", "preview.png", "eval.mp4"}
        for file in hopper["files"].values():
            fetched = requests.get(second.url + file, headers=second.auth, timeout=30)
            assert fetched.status_code == 200 and len(fetched.content) > 1000

        watcher = Watcher(second.url)
        time.sleep(2.0)  # the viewer watches the demo twin for a while first
        status, live = second.post("/api/twins/hopper/live", {})
        assert status == 200, live
        assert live == {"session": "default", "twin": "hopper", "loaded": True, "created": False,
                        "previous": "default"}
        wait_until(lambda: second.get("/api/stats")[1]["twin"] == "hopper", 10, what="the session to switch")
        time.sleep(2.0)  # and the new twin for a while after
        media = watcher.stop()
        status, detail = second.get("/api/twins/hopper")
        assert detail["loaded"] and detail["sessions"] == ["default"]
        assert detail["eval"]["live_variant"] == done["result"]["live_variant"]
    arrivals = np.array(media.video_arrival_s)
    assert len(arrivals) > 60 and np.diff(arrivals).max() < 1.0  # the viewer's stream never stopped
    assert {frame.shape for frame in media.video} == {(256, 256, 3)}
    first_frame, last_frame = media.video[0].astype(float), media.video[-1].astype(float)
    old_base = _base_frame(pack).astype(float)
    new_base = _base_frame(twins_dir / "hopper" / "pack").astype(float)
    # First the demo twin, at the end the new person: each frame is far nearer its own twin's footage.
    assert np.abs(first_frame - old_base).mean() < 0.5 * np.abs(first_frame - new_base).mean()
    assert np.abs(last_frame - new_base).mean() < 0.5 * np.abs(last_frame - old_base).mean()


def test_a_running_job_can_be_cancelled(pack: Path, artifact: Path, twins_dir: Path, new_person_clip: Path) -> None:
    with serve(pack, artifact, twins_dir) as server:
        response = upload(server, new_person_clip, name="brief", size="tiny", budget="5m")
        assert response.status_code == 202, response.text
        job_id = response.json()["job"]["id"]
        wait_until(lambda: job_state(server, job_id)["state"] == "running", 120, what="the job to start")
        status, cancelled = server.delete(f"/api/jobs/{job_id}")
        assert status == 200 and cancelled["state"] == "cancelled"
        assert not (twins_dir / "brief").exists()
        assert job_state(server, job_id)["state"] == "cancelled"
        assert [job["state"] for job in server.get("/api/jobs")[1]["jobs"]] == ["cancelled"]
        events = server.get("/api/log")[1]["events"]
        assert any("twin brief: cancelled" in event["message"] for event in events)


def _in_stage(server: ServerProcess, job_id: str, stage: str) -> dict[str, Any] | None:
    job = job_state(server, job_id)
    assert job["state"] in ("queued", "running"), job
    return job if job["stage"] == stage and (job.get("step") or 0) > 5 else None


def _ended(server: ServerProcess, job_id: str) -> dict[str, Any] | None:
    job = job_state(server, job_id)
    return job if job["state"] not in ("queued", "running") else None


def _base_frame(pack: Path) -> np.ndarray:
    return AvatarPack.load(pack).base_frames()[0]


@pytest.fixture(autouse=True)
def _no_leftover_workers() -> Iterator[None]:
    yield
    import subprocess

    def workers() -> str:
        return subprocess.run(["pgrep", "-f", "twincast.cli create"], capture_output=True, text=True,
                              check=False).stdout.strip()

    # A stopped server's worker is told to stop (SIGTERM, or its parent-death signal); at the lowest CPU priority
    # on a busy machine it may take a few seconds to be scheduled and exit, but it must not stay.
    wait_until(lambda: not workers(), 30, every_s=0.5, what="no training worker outliving its server")
