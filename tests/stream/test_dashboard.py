"""The operator dashboard and API: a producer runs a broadcast from one page, and nobody else can."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from avatar.audio import MelSpec
from stream.app import ROUTES, create_app
from stream.config import ServeConfig
from stream.runtime import TwinRuntime
from stream.session import Twin
from tests.helpers import ServerProcess, http, wait_until
from tests.stream.test_player_chromium import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEFAULT_POLICY_ARGS,
    SILENCE_LEVEL,
    SPEECH_LEVEL,
    keep_screenshot,
    quiet_then_speech,
)


def _fill(path: str) -> str:
    """A concrete URL for a route pattern (parameters become harmless placeholders; one of a few words, the
    first of them)."""
    path = re.sub(r"\{\w+:([\w.]+)(\|[\w.]+)+\}", r"\1", path)
    return re.sub(r"\{(\w+)(:[^}]+)?\}", "1", path)


def test_openapi_document_lists_exactly_the_routes_the_app_serves(server: ServerProcess) -> None:
    status, document = server.get("/api/openapi.json", headers={})  # public: it holds no secrets
    assert status == 200 and document["openapi"].startswith("3.")
    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    unstarted = TwinRuntime({"t": Twin("t", None, "e", MelSpec(), 64)}, {}, ServeConfig())  # type: ignore[arg-type]
    app = create_app(unstarted, "x" * 16)
    served = {(route.method, re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.resource.canonical))
              for route in app.router.routes() if route.method != "HEAD" and route.resource is not None}
    assert served == documented
    patterns = {(route.method, route.openapi_path): route.path for route in ROUTES}  # with {kind:a|b} patterns
    for method, path in documented:  # and the live server answers every documented operation
        code, payload = http(method, server.url + _fill(patterns[method, path]), None, headers=server.auth)
        assert not (isinstance(payload, dict) and payload.get("type") in ("HTTPNotFound", "HTTPMethodNotAllowed")
                    and code in (404, 405)), (method, path, code, payload)


def test_without_the_token_every_operator_endpoint_answers_401(server: ServerProcess) -> None:
    operator = [route for route in ROUTES if route.operator]
    assert len(operator) > 20
    for route in operator:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}):
            code, payload = http(route.method, server.url + _fill(route.path), None, headers=headers)
            assert code == 401, (route.method, route.path, code)
            assert "bearer token" in payload["error"]

    async def websockets() -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as client:
            for path in ("/api/events", "/api/push", "/api/events?token=wrong"):
                try:
                    async with client.ws_connect(server.url + path):
                        statuses.append(101)
                except aiohttp.WSServerHandshakeError as error:
                    statuses.append(error.status)
        return statuses

    assert asyncio.run(websockets()) == [401, 401, 401]
    for path in ("/", "/healthz", "/dashboard", "/static/dashboard.js"):  # viewer endpoints stay public
        assert http("GET", server.url + path, headers={})[0] == 200


def test_events_socket_streams_stats_and_events(server: ServerProcess) -> None:
    async def listen() -> list[dict[str, Any]]:
        messages = []
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(f"{server.url}/api/events?token={server.token}") as socket:
            messages.append(await socket.receive_json())
            await asyncio.get_running_loop().run_in_executor(None, lambda: server.post("/api/interrupt", {}))
            for _ in range(6):
                messages.append(await socket.receive_json(timeout=5))
        return messages

    messages = asyncio.run(listen())
    assert messages[0]["type"] == "hello" and "sessions" in messages[0]["stats"]
    assert any(m["type"] == "stats" for m in messages[1:])
    assert any(m["type"] == "event" and m["kind"] == "interrupt" for m in messages[1:])


def test_stream_keys_never_appear_in_full(server: ServerProcess) -> None:
    key = "sk-live-0123456789abcdef"
    status, output = server.post("/api/outputs", {"kind": "rtmp", "url": "rtmp://127.0.0.1:9/live", "key": key})
    assert status == 201
    try:
        everything = [output, server.get("/api/outputs")[1], server.get("/api/stats")[1], server.get("/api/log")[1]]
        assert all(key not in str(part) for part in everything)
        assert output["target"].endswith(key[-4:])  # the last characters identify it
    finally:
        server.delete(f"/api/outputs/{output['id']}")
    assert all(key not in line for line in server.lines)


def test_no_cors_for_operator_endpoints(server: ServerProcess) -> None:
    import urllib.request

    request = urllib.request.Request(server.url + "/api/stats", headers={**server.auth, "Origin": "https://evil.example"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers.get("Access-Control-Allow-Origin") is None


def test_viewer_token_guards_watching_when_set(pack: Path, artifact: Path) -> None:
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0",
                       env={"TWINCAST_VIEWER_TOKEN": "viewer-secret"}) as guarded:
        assert http("GET", guarded.url + "/", headers={})[0] == 401
        assert http("POST", guarded.url + "/whep", "v=0", content_type="application/sdp", headers={})[0] == 401
        assert http("GET", guarded.url + "/?token=viewer-secret", headers={})[0] == 200
        # The dashboard's preview watches with the operator token: it passes the viewer guard (400: bad SDP).
        operator = http("POST", guarded.url + "/whep", "v=0", content_type="application/sdp", headers=guarded.auth)
        assert operator[0] == 400
        assert http("GET", guarded.url + "/healthz", headers={})[0] == 200


def test_script_api_reorders_deletes_and_cues(server: ServerProcess) -> None:
    status, body = server.post("/api/script", {"lines": ["First line.", "Second line.", "  ", "Third line."]})
    assert status == 201 and len(body["added"]) == 3
    ids = [line["line_id"] for line in body["added"]]
    reordered = server.post("/api/script/order", {"order": ids[::-1]})  # POST is not the method: 405
    assert reordered[0] == 405
    code, script = http("PUT", server.url + "/api/script/order", {"order": ids[::-1]}, headers=server.auth)
    assert code == 200 and [line["text"] for line in script["lines"]][-3:] == ["Third line.", "Second line.",
                                                                               "First line."]
    assert http("PUT", server.url + "/api/script/order", {"order": ids[:1]}, headers=server.auth)[0] == 400
    code, cued = server.post(f"/api/script/{ids[0]}/speak", {"when": "now"})
    assert code == 202 and cued["line"]["times_spoken"] == 1
    assert server.post(f"/api/script/{ids[0]}/speak", {"when": "later"})[0] == 400
    assert server.delete(f"/api/script/{ids[1]}")[0] == 200
    assert server.delete("/api/script/99999")[0] == 404
    server.post("/api/interrupt", {})


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        *CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
    yield chromium
    chromium.close()


def test_a_producer_runs_the_broadcast_from_the_dashboard(server: ServerProcess, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(server.url + "/dashboard")
    page.wait_for_selector("#login-form", state="visible")
    page.fill("#login-token", "not-the-token")
    page.click("#login-form button")
    page.wait_for_function("document.getElementById('login-error').textContent.includes('not right')")
    page.fill("#login-token", server.token)
    page.click("#login-form button")
    page.wait_for_selector("#app", state="visible")
    page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=20_000)

    page.wait_for_timeout(500)  # the script of earlier tests has loaded
    before = page.locator("#script-lines li").count()
    page.fill("#script-text", "Welcome to the show, everyone.\nThis jacket is waterproof and light.")
    page.click("#script-form button")
    page.wait_for_function(f"document.querySelectorAll('#script-lines li').length === {before + 2}")
    last_two = page.locator("#script-lines li").all()[-2:]
    assert [item.locator(".text").text_content() for item in last_two] == [
        "Welcome to the show, everyone.", "This jacket is waterproof and light."]
    last_two[1].locator("button[data-act=up]").click()  # reorder: the jacket line goes first
    page.wait_for_function("[...document.querySelectorAll('#script-lines .text')].slice(-2)[0].textContent"
                           ".startsWith('This jacket')")

    page.locator("#script-lines li").all()[-2].locator("button[data-act=next]").click()
    page.wait_for_function("document.getElementById('speaking').textContent === 'speaking'", timeout=10_000)
    page.wait_for_function("parseFloat(document.getElementById('h-fps').textContent) > 12", timeout=10_000)
    page.wait_for_function("document.querySelector('#script-lines .meta').textContent !== '' || "
                           "[...document.querySelectorAll('#script-lines .meta')].some(m => m.textContent)")
    keep = Path("test-output")
    keep.mkdir(exist_ok=True)
    page.screenshot(path=str(keep / "dashboard.png"), full_page=True)

    page.keyboard.press("Escape")  # interrupt from the keyboard
    page.wait_for_function("document.getElementById('speaking').textContent === 'idle'", timeout=5_000)
    page.wait_for_function(
        "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('interrupted'))")
    assert server.get("/api/stats")[1]["interrupts"] >= 1

    page.check("#mic")  # "my voice": Chromium's fake microphone streams up to the server
    page.wait_for_timeout(2500)
    upstreams = server.get("/api/stats")[1]["upstreams"]
    assert upstreams and upstreams[0]["kind"] == "mic" and upstreams[0]["frames"] > 20
    page.uncheck("#mic")
    page.wait_for_timeout(500)
    assert server.get("/api/stats")[1]["upstreams"] == []
    page.close()


PREVIEW = """({
  playing: !document.getElementById("video").paused && document.getElementById("video").currentTime > 0,
  muted: document.getElementById("video").muted,
  label: document.getElementById("sound").textContent,
})"""


def test_the_preview_is_muted_until_sound_on_and_the_button_says_which(server: ServerProcess, playwright: Any) -> None:
    # An operator's ordinary browser (default autoplay policy): the click on "Sound on" is the gesture sound needs.
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=DEFAULT_POLICY_ARGS)
    try:
        page = chromium.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(f"{server.url}/dashboard#token={server.token}")
        page.wait_for_function(f"({PREVIEW}).playing", timeout=30_000)
        assert page.evaluate(PREVIEW) == {"playing": True, "muted": True, "label": "Sound on"}  # quiet by default
        page.click("#sound")
        page.wait_for_function(f"!({PREVIEW}).muted && ({PREVIEW}).label === 'Mute'", timeout=5_000)
        assert page.evaluate(PREVIEW) == {"playing": True, "muted": False, "label": "Mute"}
        quiet, loud = quiet_then_speech(page, server, "The producer hears the preview now.")
        assert quiet < SILENCE_LEVEL and loud > SPEECH_LEVEL, (quiet, loud)  # the stream it plays carries the voice
        assert page.evaluate(PREVIEW) == {"playing": True, "muted": False, "label": "Mute"}
        keep_screenshot(page, "dashboard-sound-on.png")
        page.click("#sound")
        page.wait_for_function(f"({PREVIEW}).muted && ({PREVIEW}).label === 'Sound on'", timeout=5_000)
        assert page.evaluate(PREVIEW) == {"playing": True, "muted": True, "label": "Sound on"}
        # Sound turned on another way (the browser's own menu on the video): the button follows the element.
        page.evaluate("document.getElementById('video').muted = false")
        page.wait_for_function("document.getElementById('sound').textContent === 'Mute'", timeout=5_000)
    finally:
        chromium.close()


def test_the_dashboard_publishes_to_a_whip_endpoint_and_stops_it(server: ServerProcess, browser) -> None:  # type: ignore[no-untyped-def]
    from tests.stream.test_whip import WhipEndpoint

    loop = asyncio.new_event_loop()  # the endpoint's own loop, in a thread, beside Playwright's synchronous calls
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    endpoint = WhipEndpoint("dashboard-endpoint-token")
    asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(10)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    try:
        page.goto(f"{server.url}/dashboard#token={server.token}")
        page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=20_000)
        page.fill("#whip-url", endpoint.url)
        page.fill("#whip-token", endpoint.token)
        page.click("#whip-form button")
        row = f"[...document.querySelectorAll('#outputs li')].find(li => li.textContent.includes('{endpoint.url}'))"
        page.wait_for_function(f"{row} && {row}.querySelector('.badge').textContent === 'live'", timeout=20_000)
        assert page.input_value("#whip-token") == ""  # the token does not stay in the form
        wait_until(lambda: len(endpoint.media.video_pts) >= 25, 20, what="the endpoint receiving the twin")
        page.evaluate(f"{row}.querySelector('button').click()")
        wait_until(lambda: endpoint.deleted, 10, what="the dashboard's Stop hanging up (DELETE)")
        page.wait_for_function(f"!{row}", timeout=10_000)
        assert endpoint.token not in page.content()  # masked on the page as in the API
    finally:
        page.close()
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
