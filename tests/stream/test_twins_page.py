"""The dashboard's Twins page in headless Chromium against a real server: an operator uploads a video, watches the
twin train (stage, progress over all stages, the holdout preview), sees the eval figures and the side-by-side video,
and puts the twin live with a click while a viewer stays connected; an upload the server refuses shows its reason
on the page (integration tier: tiny size, seconds of training)."""

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
from stream.whep_client import pull
from tests.helpers import ServerProcess, wait_until
from tests.stream.test_player_chromium import CHROMIUM, CHROMIUM_ARGS
from tests.stream.test_twin_api import TINY_BUDGET, Watcher, _no_leftover_workers, serve  # noqa: F401 (a fixture)

SHOTS = Path("/tmp")  # twins-page-*.png: the page in each state, for a person to look at

PAGE = """(() => {
  const text = (id) => (document.getElementById(id) || {}).textContent || "";
  const preview = document.getElementById("twin-preview");
  const box = document.getElementById("twin-preview-box");
  return {
    state: text("twin-state"),
    stage: text("twin-stage"),
    progress: Number((document.getElementById("twin-bar") || { getAttribute: () => 0 }).getAttribute("aria-valuenow")),
    preview: Boolean(preview && box && !box.hidden && preview.complete && preview.naturalWidth > 0),
    live: text("twin-live"),
    liveShown: !(document.getElementById("twin-live") || { hidden: true }).hidden,
  };
})()"""


class FlowingWatcher(Watcher):
    """A WHEP viewer that stays connected until ``stop``, and says (``flowing``) once its media flows."""

    def __init__(self, url: str) -> None:
        self.flowing = threading.Event()
        super().__init__(url)

    def _run(self) -> None:
        async def until_stopped() -> None:
            self.flowing.set()
            await asyncio.get_running_loop().run_in_executor(None, self._stop.wait)

        try:
            self.media = asyncio.run(pull(self._url, 0.5, during=until_stopped, keep_video=400))
        except BaseException as exc:  # handed to the test's thread in stop()
            self.error = exc
            self.flowing.set()


@pytest.fixture(scope="module")
def twins_server(pack: Path, artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny demo twin served (session "default"), making twins into a temporary folder, a preview every 2 s."""
    with serve(pack, artifact, tmp_path_factory.mktemp("twins-page") / "twins",
               TWINCAST_SERVE_TWIN_PREVIEW_EVERY_S="2") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does this when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        chromium = running.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_twins_page(browser: Any, server: ServerProcess) -> Any:
    """A dashboard page, logged in with the operator token, on its Twins tab."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server.url + "/dashboard")
    page.wait_for_selector("#login-form", state="visible")
    page.fill("#login-token", server.token)
    page.click("#login-form button")
    page.wait_for_selector("#app", state="visible")
    page.click("#tabs [data-tab=twins]")
    page.wait_for_selector("#twin-form", state="visible")
    page.wait_for_function("document.querySelectorAll('#twin-sessions li').length > 0")
    return page


def shoot(page: Any, name: str) -> Path:
    """A full-page screenshot as /tmp/twins-page-NAME.png."""
    path = SHOTS / f"twins-page-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a picture, not an empty page
    return path


def test_an_upload_the_server_refuses_shows_its_reason(twins_server: ServerProcess, browser: Any,
                                                      tmp_path: Path) -> None:
    page = open_twins_page(browser, twins_server)
    page.click("#twin-upload")  # nothing chosen yet: said on the page, nothing sent
    page.wait_for_function("document.getElementById('twin-error').textContent.includes('Choose the video file')")

    notes = tmp_path / "notes.txt"
    notes.write_text("These are my notes, not a video.\n" * 50)
    refused = requests.post(twins_server.url + "/api/twins", headers=twins_server.auth, data={"name": "notes"},
                            files={"video": ("notes.txt", notes.read_bytes(), "text/plain")}, timeout=60)
    assert refused.status_code == 422, refused.text
    reason = refused.json()["error"]
    assert "not a readable video" in reason

    page.set_input_files("#twin-video", str(notes))
    page.fill("#twin-name", "notes")
    page.click("#twin-upload")
    page.wait_for_function("document.getElementById('twin-error').textContent.includes('refused')", timeout=30_000)
    shown = page.locator("#twin-error").text_content() or ""
    assert shown == f"The server refused the upload: {reason}"
    assert page.locator("#twin-upload").is_enabled()  # the operator can choose another file and try again
    assert page.locator("#twin-upload-progress").is_hidden()
    shoot(page, "refused")
    assert twins_server.get("/api/jobs")[1]["jobs"] == []
    page.close()


def test_an_operator_makes_a_twin_from_a_video_and_puts_it_live(twins_server: ServerProcess, browser: Any,
                                                                new_person_clip: Path, pack: Path) -> None:
    server = twins_server
    page = open_twins_page(browser, server)
    page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=30_000)
    assert page.locator("#twin-size").input_value() == "demo" and page.locator("#twin-budget").input_value() == "15m"
    page.set_input_files("#twin-video", str(new_person_clip))
    page.fill("#twin-name", "hopper")
    page.select_option("#twin-size", "tiny")
    page.fill("#twin-budget", TINY_BUDGET)
    shoot(page, "form")
    network = page.context.new_cdp_session(page)  # a slow uplink, so the upload's progress shows on the way
    network.send("Network.enable")
    network.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                      "uploadThroughput": new_person_clip.stat().st_size / 4})
    page.click("#twin-upload")
    page.wait_for_function("(bar => bar.value > 0.2 && bar.value < 0.9)(document.getElementById('twin-upload-bar'))",
                           timeout=30_000)
    assert "Uploading" in (page.locator("#twin-upload-text").text_content() or "")
    assert page.locator("#twin-upload").is_disabled()  # one upload at a time
    shoot(page, "uploading")
    page.wait_for_function("document.getElementById('twin-upload-text').textContent.includes('queued')",
                           timeout=60_000)
    network.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                      "uploadThroughput": -1})
    assert page.locator("#twin-upload-bar").evaluate("bar => bar.value") == 1
    page.wait_for_function("document.getElementById('twin-title').textContent === 'hopper'",
                           timeout=10_000)  # the new job is selected (on the page's next look at the jobs)

    # Follow the page (not the API) to the end: the stage it names, the bar, the preview.
    seen: list[dict[str, Any]] = []
    shots: set[str] = set()

    def finished() -> bool:
        now = page.evaluate(PAGE)
        seen.append(now)
        if now["state"] == "running" and now["preview"] and "training" not in shots:
            shoot(page, "training")
            shots.add("training")
        assert now["state"] in ("queued", "running", "ready to go live"), now
        return bool(now["state"] == "ready to go live")

    wait_until(finished, 480, every_s=0.25, what="the page to say the twin is ready")
    stages = [now["stage"] for now in seen]
    assert len(set(stages)) >= 4, set(stages)  # queued/starting, the stages, done
    assert any(stage.startswith("Stage 2 of 4: Training the twin") for stage in stages), set(stages)
    assert stages[-1] == "Done: the twin is ready"
    progress = [now["progress"] for now in seen]
    assert progress[-1] == 100 and len({value for value in progress if 0 < value < 100}) >= 3  # it moved, to the end
    assert any(now["preview"] for now in seen if now["state"] == "running"), "no holdout preview while it trained"

    # Done: the eval figures, the side-by-side video, the enrollment report and contact sheet.
    page.wait_for_selector("#twin-results", state="visible", timeout=30_000)
    page.wait_for_function("(video => video.duration > 0 && video.readyState >= 2)"
                           "(document.getElementById('twin-eval-video'))", timeout=30_000)
    page.wait_for_function("document.getElementById('twin-sheet').naturalWidth > 0", timeout=30_000)
    status, detail = server.get("/api/twins/hopper")
    assert status == 200 and detail["state"] == "ready"
    live_variant = detail["eval"]["live_variant"]
    live_row = page.locator("#twin-eval tbody tr.live")
    assert live_row.count() == 1 and (live_row.locator("td").first.text_content() or "").startswith(live_variant)
    figures = detail["eval"]["variants"][live_variant]
    assert live_row.locator(".psnr-mouth").text_content() == f"{figures['psnr_mouth']:.2f} dB"
    assert live_row.locator(".psnr-face").text_content() == f"{figures['psnr_face']:.2f} dB"
    assert "·" in (live_row.locator(".sync").text_content() or "")
    report = page.locator("#twin-report").text_content() or ""
    assert "usable" in report and "held out for the eval" in report
    assert page.locator("#twin-go-live").is_visible()
    assert page.locator("#twin-cancel").is_hidden()
    shoot(page, "done")

    # A viewer watches the demo twin; the operator clicks Go live; the viewer stays and sees Grace Hopper.
    watcher = FlowingWatcher(server.url)
    assert watcher.flowing.wait(30) and watcher.error is None, watcher.error
    assert server.get("/api/stats")[1]["sessions"]["default"]["twin"] == "default"
    clicked_at = time.monotonic()
    page.click("#twin-go-live")
    wait_until(lambda: server.get("/api/stats")[1]["sessions"]["default"]["twin"] == "hopper", 60,
               what="the default session to show hopper")
    switched_at = time.monotonic()
    page.wait_for_function("document.getElementById('twin-live').textContent === 'live in session default'",
                           timeout=15_000)
    assert page.locator("#twin-go-live").is_hidden()  # it is live here: nothing to click
    assert page.locator("#twin-state").text_content() == "loaded"
    assert "went live in session default" in (page.locator("#twin-meta").text_content() or "")
    sessions = page.locator("#twin-sessions li.current").text_content() or ""
    assert sessions.startswith("default shows hopper")
    assert "live in default" in (page.locator("#twins-list li[data-name=hopper]").text_content() or "")
    frame = server.get("/api/stats")[1]["sessions"]["default"]["frame_index"]
    wait_until(lambda: server.get("/api/stats")[1]["sessions"]["default"]["frame_index"] > frame + 50, 30,
               what="two seconds of the new twin")
    assert watcher.error is None and watcher._thread.is_alive()  # the viewer is still connected
    shoot(page, "live")
    media = watcher.stop()
    page.close()

    arrivals = np.array(media.video_arrival_s)
    assert arrivals[0] < clicked_at and arrivals[-1] > switched_at + 1.0  # watched before and after the switch
    assert np.diff(arrivals).max() < 1.0  # and the stream never stopped
    last = media.video[-1].astype(float)
    old_base = AvatarPack.load(pack).base_frames()[0].astype(float)
    new_base = AvatarPack.load(Path(detail["create"]["video"]["path"]).parent / "pack").base_frames()[0].astype(float)
    assert np.abs(last - new_base).mean() < 0.5 * np.abs(last - old_base).mean()  # the new person, at the end
