"""The player page in a real headless Chromium (Debian's, driven by Playwright): it plays and it speaks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required"]

INBOUND_AUDIO = """async () => {
  const report = await pc.getStats();
  for (const stat of report.values()) {
    if (stat.type === "inbound-rtp" && stat.kind === "audio") return stat.totalSamplesReceived || 0;
  }
  return 0;
}"""

# Listen to the received audio track with Web Audio and keep the loudest level of each 100 ms.
LISTEN = """() => {
  const context = new AudioContext();
  const source = context.createMediaStreamSource(document.getElementById("video").srcObject);
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  source.connect(analyser);
  const buffer = new Float32Array(analyser.fftSize);
  window.levels = [];
  setInterval(() => {
    analyser.getFloatTimeDomainData(buffer);
    let peak = 0;
    for (const value of buffer) peak = Math.max(peak, Math.abs(value));
    window.levels.push(peak);
  }, 100);
  return context.state;
}"""


@pytest.fixture(scope="module")
def browser_page():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does this when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 1000})
        yield page
        browser.close()


def test_player_page_plays_and_speaks(server: ServerProcess, browser_page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser_page
    page.goto(f"{server.url}/#token={server.token}")  # the operator link: the page may speak and show stats
    page.wait_for_function(
        "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames > 50", timeout=30_000)
    assert "token" not in page.url  # taken out of the address bar
    assert page.evaluate("document.getElementById('video').videoWidth") == 256
    assert page.text_content("#state") == "live"
    assert page.evaluate(INBOUND_AUDIO) > 48_000  # more than a second of decoded audio
    page.evaluate(LISTEN)
    page.wait_for_timeout(600)
    quiet = max(page.evaluate("window.levels"))
    page.fill("#text", "The browser hears me and sees my mouth move.")
    page.click("button[type=submit]")
    page.wait_for_function("document.getElementById('message').textContent.startsWith('Speaking')", timeout=20_000)
    page.wait_for_function("document.getElementById('stats').textContent.includes('speaking')", timeout=10_000)
    page.wait_for_timeout(1500)
    loud = max(page.evaluate("window.levels"))
    assert quiet < 0.01 and loud > 0.05, (quiet, loud)  # silence, then the speech, decoded by the browser
    shot = tmp_path / "player.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    keep = Path("test-output")
    keep.mkdir(exist_ok=True)
    shutil.copy(shot, keep / "player.png")
    page.keyboard.press("Escape")
    page.wait_for_function("document.getElementById('message').textContent === 'Interrupted'", timeout=10_000)


def test_embed_mode_is_video_only(server: ServerProcess, browser_page) -> None:  # type: ignore[no-untyped-def]
    page = browser_page
    page.goto(server.url + "/?embed=1")
    page.wait_for_function(
        "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames > 10", timeout=30_000)
    assert not page.is_visible("#say") and not page.is_visible("h1")
