"""The player page in a real headless Chromium (Debian's, driven by Playwright): it plays, with sound, and it speaks.

Playwright's own ``evaluate`` and ``wait_for_*`` run as a user gesture, and one gesture is all Chromium needs to let
a page start sound. So until a page has made its autoplay decision these tests read it through a bare DevTools
``Runtime.evaluate`` (``PageProbe``), which is no gesture: what they see is what OBS's Browser Source, which never
clicks, would get.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ServerProcess, wait_until

CHROMIUM = "/usr/bin/chromium"
# As OBS's Browser Source runs a page: sound may start without a gesture.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required"]
# As an ordinary browser runs it: sound needs the visitor's gesture first.
DEFAULT_POLICY_ARGS = [arg for arg in CHROMIUM_ARGS if not arg.startswith("--autoplay-policy")]
SPEECH_LEVEL = 0.05  # peak sample level that is clearly speech (espeak-ng peaks near 0.4–0.5 here)
SILENCE_LEVEL = 0.01  # peak sample level of the idle twin: silence plus the codec's noise floor

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

# What the viewer gets from the video element: is it playing, is its sound on, is the unmute button offered.
PLAYBACK = """({
  playing: !document.getElementById("video").paused && document.getElementById("video").currentTime > 0,
  muted: document.getElementById("video").muted,
  unmuteOffered: getComputedStyle(document.getElementById("unmute")).display !== "none",
  gestured: navigator.userActivation.hasBeenActive,
})"""


class PageProbe:
    """Reads a page over its own DevTools session, without the user gesture Playwright's ``evaluate`` carries."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.session = page.context.new_cdp_session(page)

    def value(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        reply = self.session.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} threw in the page: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait(self, expression: str, accept: Callable[[Any], bool], what: str, timeout_s: float) -> Any:
        """Poll ``expression`` until ``accept`` takes its value; that value, or AssertionError naming the last one."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.value(expression)
            if accept(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout_s} s; last seen {seen!r}")
            self.page.wait_for_timeout(100)


def wait_until_idle(server: ServerProcess, timeout_s: float = 10) -> None:
    """Interrupt whatever earlier tests left queued and wait until the twin says it is silent."""
    assert server.post("/api/interrupt", {})[0] == 200
    deadline = time.monotonic() + timeout_s
    while server.get("/api/stats")[1]["speaking"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"the twin was still speaking {timeout_s} s after an interrupt")
        time.sleep(0.1)


def quiet_then_speech(page: Any, server: ServerProcess, text: str, *, say: Callable[[str], None] | None = None
                      ) -> tuple[float, float]:
    """The loudest level the page receives while the twin is idle, then once it says ``text``.

    Args:
        page: a page whose ``#video`` element plays the twin's stream.
        server: the server the page watches.
        text: what the twin says.
        say: how the twin is told to say it (default: the operator API's ``/api/say``).
    Returns:
        (peak level over ~0.6 s of idle twin, peak level while speech arrives), each a sample value in [0, 1].
    """
    wait_until_idle(server)
    page.evaluate(LISTEN)
    page.wait_for_function("window.levels.length >= 8")
    quiet = max(page.evaluate("window.levels.slice(2)"))  # from 200 ms in: the analyser has filled its window
    if say is None:
        status, reply = server.post("/api/say", {"text": text})
        assert status == 202, reply
    else:
        say(text)
    probe = PageProbe(page)
    loud = probe.wait("Math.max(...window.levels)", lambda level: level > SPEECH_LEVEL, "speech in the received audio",
                      timeout_s=20)
    wait_until_idle(server)
    return quiet, loud


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does this when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def obs_browser(playwright: Any) -> Iterator[Any]:
    """Chromium flagged as OBS's Browser Source runs pages: sound may start without a gesture."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def default_browser(playwright: Any) -> Iterator[Any]:
    """Chromium with its default autoplay policy: sound needs the visitor's gesture first."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=DEFAULT_POLICY_ARGS)
    yield browser
    browser.close()


def open_player(browser: Any, url: str) -> tuple[Any, PageProbe]:
    """A new page at ``url`` and a gesture-free probe of it, once its video plays (autoplay decided by then)."""
    page = browser.new_page(viewport={"width": 900, "height": 1000})
    probe = PageProbe(page)
    page.goto(url)
    probe.wait(PLAYBACK, lambda seen: seen["playing"], "playing video", timeout_s=30)
    return page, probe


def keep_screenshot(page: Any, name: str) -> Path:
    """Save a screenshot of ``page`` as ``test-output/NAME`` and return its path."""
    keep = Path("test-output")
    keep.mkdir(exist_ok=True)
    shot = keep / name
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000  # a picture, not an empty page
    return shot


def test_player_page_plays_and_speaks(server: ServerProcess, obs_browser: Any, tmp_path: Path) -> None:
    # The operator link: the page may speak and show stats.
    page, probe = open_player(obs_browser, f"{server.url}/#token={server.token}")
    playback = probe.value(PLAYBACK)
    assert not playback["gestured"]  # the test has not clicked for the page (the premise of what follows)
    assert not playback["muted"] and not playback["unmuteOffered"], playback  # sound on, as the flag allows
    page.wait_for_function(
        "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames > 50", timeout=30_000)
    assert "token" not in page.url  # taken out of the address bar
    assert page.evaluate("document.getElementById('video').videoWidth") == 256
    assert page.text_content("#state") == "live"
    assert page.evaluate(INBOUND_AUDIO) > 48_000  # more than a second of decoded audio

    def type_and_speak(text: str) -> None:
        page.fill("#text", text)
        page.click("button[type=submit]")
        page.wait_for_function("document.getElementById('message').textContent.startsWith('Speaking')",
                               timeout=20_000)

    quiet, loud = quiet_then_speech(page, server, "The browser hears me and sees my mouth move.", say=type_and_speak)
    assert quiet < SILENCE_LEVEL and loud > SPEECH_LEVEL, (quiet, loud)  # silence, then speech, decoded
    assert not probe.value(PLAYBACK)["muted"]
    page.wait_for_function("document.getElementById('stats').textContent.includes('viewers')", timeout=10_000)
    shutil.copy(keep_screenshot(page, "player.png"), tmp_path / "player.png")
    page.keyboard.press("Escape")
    page.wait_for_function("document.getElementById('message').textContent === 'Interrupted'", timeout=10_000)
    page.close()


def test_obs_embed_plays_with_sound(server: ServerProcess, obs_browser: Any) -> None:
    page, probe = open_player(obs_browser, server.url + "/?embed=1")
    playback = probe.value(PLAYBACK)
    assert not playback["gestured"]
    assert not playback["muted"] and not playback["unmuteOffered"], playback  # an OBS scene carries the sound
    assert not page.is_visible("#say") and not page.is_visible("h1")  # video only
    quiet, loud = quiet_then_speech(page, server, "This scene carries my voice.")
    assert quiet < SILENCE_LEVEL and loud > SPEECH_LEVEL, (quiet, loud)
    playback = probe.value(PLAYBACK)
    assert playback["playing"] and not playback["muted"], playback  # and it stayed so while speech arrived
    keep_screenshot(page, "player-embed.png")
    page.close()


@pytest.mark.parametrize("path", ["/", "/?embed=1"])
def test_without_autoplay_permission_the_page_plays_muted_until_sound_on(server: ServerProcess, default_browser: Any,
                                                                          path: str) -> None:
    page, probe = open_player(default_browser, server.url + path)
    playback = probe.wait(PLAYBACK, lambda seen: seen["unmuteOffered"], "unmute button", timeout_s=10)
    assert not playback["gestured"], playback  # refused because nobody clicked, not by accident
    assert playback["muted"] and playback["playing"], playback  # the picture plays on, muted
    if path == "/":
        keep_screenshot(page, "player-muted.png")  # the button over the picture, where a visitor finds it
    page.click("#unmute")
    playback = probe.wait(PLAYBACK, lambda seen: not seen["muted"] and not seen["unmuteOffered"],
                          "sound on and the button gone after the click", timeout_s=5)
    assert playback["playing"], playback
    quiet, loud = quiet_then_speech(page, server, "Now you can hear me.")
    assert quiet < SILENCE_LEVEL and loud > SPEECH_LEVEL, (quiet, loud)
    assert not probe.value(PLAYBACK)["muted"]
    page.close()


def _viewers(server: ServerProcess) -> int:
    stats = server.get("/api/stats")[1]
    return int(stats["sessions"][stats["default_session"]]["viewers"])


@pytest.mark.parametrize("path", ["/", "/?embed=1", "/dashboard#token="])
def test_a_page_that_goes_away_hangs_up_at_once(server: ServerProcess, obs_browser: Any, path: str) -> None:
    # Closing or leaving the page frees its viewer slot within seconds, not after the server's 10 s silence timeout
    # (max_viewers counts it until then).
    wait_until(lambda: _viewers(server) == 0, 15, what="earlier pages' viewers gone")
    page = obs_browser.new_page()
    page.goto(server.url + path + (server.token if path.endswith("=") else ""))
    wait_until(lambda: _viewers(server) == 1, 20, what="the page watching")
    left = time.monotonic()
    page.close(run_before_unload=True)
    wait_until(lambda: _viewers(server) == 0, 15, every_s=0.1, what="the page's viewer gone")
    assert time.monotonic() - left < 3.0  # hung up (DELETE), not dropped by the timeout
