"""Live commerce on a 9:16 canvas, end to end: a real server (``--canvas 720x1280``), real aiortc and Chromium
viewers, real espeak-ng. The card appears in the received video when shown and goes when hidden; a run of show
advances on its own and the dashboard follows it; a viewer's question is answered aloud on the producer's click or
by an agent webhook; and nothing a viewer wrote is spoken without a click or the show's auto-answer switch."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import requests
from aiohttp import web
from PIL import Image

from stream.overlay_art import ElementLayout
from stream.whep_client import WhepViewer
from tests.helpers import ServerProcess, http, wait_until
from tests.stream.test_player_chromium import CHROMIUM, CHROMIUM_ARGS, wait_until_idle

CANVAS = (720, 1280)
BACKGROUND = "#d8dee9"  # light, so the card's dark panel is far from it
JACKET = {"id": "jacket", "name": "Packable rain jacket", "price": "$59", "was_price": "$89",
          "bullets": ["Waterproof to 10,000 mm", "Folds into its own pocket"], "code": "RAIN20",
          "faq": [{"question": "Is it waterproof?", "answer": "Yes, it keeps you dry in heavy rain.",
                   "keywords": ["waterproof", "rain", "wet"]},
                  {"question": "What sizes are there?", "answer": "Extra small to double extra large.",
                   "keywords": ["size", "sizes", "fit"]}]}
SHOES = {"id": "shoes", "name": "Trail shoes", "price": "$89"}


@pytest.fixture(scope="module")
def canvas_server(pack: Path, artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A 720×1280 server with an empty catalogue of its own and a still head."""
    commerce = tmp_path_factory.mktemp("commerce")
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       "--canvas", "720x1280", "--canvas-background", BACKGROUND, env={
                           "TWINCAST_SERVE_COMMERCE_DIR": str(commerce),
                           "TWINCAST_SERVE_OPERATOR_RATE_PER_S": "1000", "TWINCAST_SERVE_OPERATOR_BURST": "1000"}
                       ) as process:
        assert process.post("/api/products", JACKET)[0] == 201
        assert process.post("/api/products", SHOES)[0] == 201
        picture = io.BytesIO()
        Image.open("assets/portrait.png").save(picture, "PNG")
        assert put_bytes(process, "/api/products/jacket/picture", picture.getvalue())[0] == 200
        yield process


def put_bytes(server: ServerProcess, path: str, payload: bytes) -> tuple[int, Any]:
    """PUT raw bytes as the operator; (status, JSON body)."""
    response = requests.put(server.url + path, data=payload, timeout=30,
                            headers={"Content-Type": "application/octet-stream", **server.auth})
    return response.status_code, response.json()


def card_box() -> tuple[slice, slice]:
    """The card's pixels on the canvas (rows, columns), inset a little from its rounded edge."""
    layout = ElementLayout(*CANVAS)
    (left, top), (width, height) = layout.card_origin(), layout.card_size()
    return slice(top + 8, top + height - 8), slice(left + 8, left + width - 8)


def test_the_canvas_is_720x1280_and_the_api_says_where_the_twin_is(canvas_server: ServerProcess) -> None:
    stats = canvas_server.get("/api/stats")[1]
    assert stats["frame_size"] == list(CANVAS)
    status, canvas = canvas_server.get("/api/canvas")
    assert status == 200 and canvas["canvas"] and canvas["frame_size"] == list(CANVAS)
    assert canvas["twin_box"][2] == CANVAS[0]  # as wide as the canvas, at its top: room for products below
    assert canvas["background"] == BACKGROUND
    assert canvas_server.post("/api/canvas", {"scale": 0.5})[0] == 405  # PUT moves it
    code, body = http("PUT", canvas_server.url + "/api/canvas", {"scale": 9}, headers=canvas_server.auth)
    assert code == 400 and "scale" in body["error"]


def test_a_720x1280_whep_stream_shows_the_card_when_shown_and_not_once_hidden(canvas_server: ServerProcess) -> None:
    rows, columns = card_box()

    async def watch() -> dict[str, float]:
        viewer = WhepViewer(canvas_server.url, keep_video=400, reduce=lambda rgb: rgb[rows, columns].copy())
        seen: dict[str, float] = {}
        async with aiohttp.ClientSession(headers=canvas_server.auth) as client:
            await viewer.connect(client)
            try:
                await asyncio.wait_for(viewer.media.first_video.wait(), timeout=20)
                await until(lambda: len(viewer.media.video) >= 10, "10 frames")
                empty = np.median(np.stack(viewer.media.video[-5:]).astype(np.float32), axis=0)
                change = lambda: float(np.abs(viewer.media.video[-1].astype(np.float32) - empty).mean())  # noqa: E731
                seen["before"] = change()
                async with client.post(canvas_server.url + "/api/overlays/card", json={"product": "jacket"}) as shown:
                    assert shown.status == 200, await shown.text()
                seen["shown"] = await until(lambda: (value := change()) > 40 and value, "the card on screen")
                async with client.delete(canvas_server.url + "/api/overlays/card") as hidden:
                    assert hidden.status == 200, await hidden.text()
                seen["hidden"] = await until(lambda: (value := change()) < 6 and value + 1e-6, "the card gone")
            finally:
                await viewer.hang_up(client)
        return seen

    seen = run_async(watch())
    assert seen["before"] < 6 and seen["shown"] > 40 and seen["hidden"] < 6, seen


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to its end on a loop of its own thread (Playwright's sync API holds this thread's loop)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # handed back to the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(120)
    if "error" in result:
        raise result["error"]
    return result["value"]


async def until(probe: Any, what: str, timeout_s: float = 20.0) -> Any:
    """Await ``probe()`` being truthy (checked every 40 ms, a frame), returning its value; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.04)
    return value


SHOW = {"id": "spring-drop", "name": "Spring drop", "host": {"name": "Mia Chen", "title": "your host"}, "gap_s": 0.2,
        "segments": [
            {"title": "Hello", "lines": ["Hello everyone."], "elements": ["lower_third"]},
            {"title": "Rain jacket", "product": "jacket", "lines": ["This is the jacket.", "It folds away."],
             "elements": ["card", "badge", "ticker"], "offer": {"text": "-34%", "detail": "today", "ends_in_s": 300},
             "ticker": "Free shipping over $50 · ask your questions in the chat"},
            {"title": "Trail shoes", "product": "shoes", "lines": ["Now the shoes."], "elements": ["card"]}]}


@pytest.fixture(scope="module")
def browser(canvas_server: ServerProcess) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        chromium = running.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_a_run_of_show_advances_on_its_own_and_the_dashboard_follows(canvas_server: ServerProcess,
                                                                     browser: Any) -> None:
    wait_until_idle(canvas_server)
    assert canvas_server.post("/api/shows", SHOW)[0] == 201
    page = browser.new_page(viewport={"width": 1500, "height": 1150})
    page.goto(f"{canvas_server.url}/dashboard#token={canvas_server.token}")
    page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=30_000)
    page.click("#tabs [data-tab=show]")
    page.wait_for_selector("#show-library option[value=spring-drop]", state="attached")
    page.select_option("#show-library", "spring-drop")
    page.click("#show-load")
    page.wait_for_function("document.getElementById('run-state').textContent === 'ready · Spring drop'")
    page.wait_for_function("[...document.querySelectorAll('.line .estimate')].every(e => e.textContent.endsWith(' s'))",
                           timeout=20_000)  # every line's duration estimated with the TTS
    page.click("#run-start")
    segment = "document.querySelector('.segment.current') && document.querySelector('.segment.current').dataset.index"
    page.wait_for_function(f"{segment} === '1'", timeout=30_000)  # on to the jacket without a click
    page.wait_for_function("document.querySelector('.element-row[data-kind=card]').classList.contains('on')")
    overlays = canvas_server.get("/api/overlays")[1]["elements"]
    assert overlays["card"]["product"] == "jacket" and overlays["badge"]["visible"] and overlays["ticker"]["visible"]
    assert not overlays["lower_third"]["visible"]  # segment 1's element went with it
    keep = Path("test-output")
    keep.mkdir(exist_ok=True)
    page.wait_for_timeout(700)  # the card's fade (8 frames) has ended in the preview before the picture is kept
    page.screenshot(path=str(keep / "show-dashboard.png"), full_page=True)
    stream = browser.new_page(viewport={"width": 405, "height": 720})
    stream.goto(f"{canvas_server.url}/?embed=1")
    stream.wait_for_function("document.getElementById('video').currentTime > 0.5", timeout=30_000)
    stream.screenshot(path=str(keep / "stream-9x16.png"))
    assert stream.evaluate("[document.getElementById('video').videoWidth, document.getElementById('video')"
                           ".videoHeight]") == list(CANVAS)
    stream.close()
    page.wait_for_function("document.getElementById('run-state').textContent === 'finished · Spring drop'",
                           timeout=40_000)
    assert page.locator(".line.spoken").count() == 4  # every line said once, in order, unclicked
    run = canvas_server.get("/api/show")[1]
    assert run["state"] == "finished" and all(all(s["spoken"]) for s in run["segments"])
    events = [e["message"] for e in canvas_server.get("/api/log")[1]["events"]]
    assert [m for m in events if m.startswith("segment ")][-3:] == ["segment 1/3: Hello", "segment 2/3: Rain jacket",
                                                                    "segment 3/3: Trail shoes"]
    page.close()


def test_hold_resume_skip_back_and_a_stop_from_the_studio_steer_the_show(canvas_server: ServerProcess) -> None:
    wait_until_idle(canvas_server)
    lines = ["One, the first line.", "Two, the second line.", "Three, the third line.", "Four, the fourth line."]
    steer = {**SHOW, "id": "steer", "gap_s": 0.2, "segments": [{"title": "Lines", "lines": lines}]}
    assert canvas_server.post("/api/show/load", {"show": steer})[0] == 200

    def run() -> dict[str, Any]:
        return canvas_server.get("/api/show")[1]  # type: ignore[no-any-return]

    def where() -> tuple[str, int]:
        state = run()
        return state["state"], state["position"]["line"]

    assert canvas_server.post("/api/show/start", {})[1]["state"] == "running"
    assert canvas_server.post("/api/show/hold", {})[1]["state"] == "holding"  # the first line is said to its end
    wait_until(lambda: run()["segments"][0]["spoken"][0] and not canvas_server.get("/api/stats")[1]["speaking"], 20,
               what="the first line finished")
    assert where() == ("holding", 1) and run()["segments"][0]["spoken"] == [True, False, False, False]
    assert canvas_server.post("/api/show/resume", {})[1]["state"] == "running"
    wait_until(lambda: canvas_server.get("/api/stats")[1]["speaking"], 10, what="the second line")
    assert canvas_server.post("/api/show/skip", {})[1]["position"]["line"] == 2  # the second is cut
    assert canvas_server.post("/api/show/back", {})[1]["position"]["line"] == 1
    wait_until(lambda: run()["segments"][0]["spoken"][1], 20, what="the second line said after back")
    assert canvas_server.post("/api/interrupt", {})[0] == 200  # the producer's Stop on the Studio page
    wait_until(lambda: run()["state"] == "holding", 5, what="the show held by the Stop")
    assert canvas_server.post("/api/show/stop", {})[1]["state"] == "ready"
    assert not any(e["visible"] for e in canvas_server.get("/api/overlays")[1]["elements"].values())
    wait_until_idle(canvas_server)


def test_shows_export_and_import_as_json_and_bad_ones_are_refused_by_name(canvas_server: ServerProcess) -> None:
    assert canvas_server.post("/api/shows", SHOW)[0] == 201
    status, exported = canvas_server.get("/api/shows/spring-drop")
    assert status == 200 and exported["segments"][1]["offer"]["ends_in_s"] == 300
    imported = canvas_server.post("/api/shows", {**exported, "id": "spring-drop-copy", "name": "Copy"})
    assert imported[0] == 201 and imported[1]["segments"] == exported["segments"]
    bad = json.loads(json.dumps(SHOW))
    bad["segments"][2]["product"] = None
    status, body = canvas_server.post("/api/shows", {**bad, "id": "bad"})
    assert status == 400 and "segments[2]" in body["error"] and "card" in body["error"], body
    status, body = canvas_server.post("/api/shows", {**SHOW, "segments": [{"title": "x", "lines": ["  "]}]})
    assert status == 400 and "segments[0].lines[0]" in body["error"], body
    missing = json.loads(json.dumps(SHOW))
    missing["segments"][1]["product"] = "no-such-product"
    status, body = canvas_server.post("/api/show/load", {"show": missing})
    assert status == 422 and "no-such-product" in body["error"]
    assert http("DELETE", canvas_server.url + "/api/shows/spring-drop-copy", headers=canvas_server.auth)[0] == 204


def test_a_viewer_question_is_answered_aloud_on_the_producers_click(canvas_server: ServerProcess) -> None:
    wait_until_idle(canvas_server)
    status, message = canvas_server.post("/api/chat", {"user": "anna_k", "text": "Is it waterproof? I live in Leeds",
                                                       "platform": "tiktok"})
    assert status == 201 and message["state"] == "new" and message["flags"] == []
    suggestions = canvas_server.get(f"/api/chat/{message['id']}/suggestions")[1]["suggestions"]
    assert suggestions[0]["product_id"] == "jacket" and suggestions[0]["index"] == 0
    status, answered = canvas_server.post(f"/api/chat/{message['id']}/answer", {
        "source": "faq", "product": "jacket", "faq_index": 0, "read_question": True})
    assert status == 202, answered
    assert answered["answer"] == JACKET["faq"][0]["answer"]  # type: ignore[index]
    wait_until(lambda: canvas_server.get("/api/stats")[1]["speaking"], 10, what="the twin speaking the answer")
    listed = canvas_server.get("/api/chat?state=answered")[1]["messages"]
    assert any(m["id"] == message["id"] and m["answered_by"] == "faq" for m in listed)
    # A rude question is not read aloud; the producer's own words still can be.
    rude = canvas_server.post("/api/chat", {"user": "troll", "text": "this jacket is sh1iit"})[1]
    assert rude["flags"] == ["blocked words"]
    status, refused = canvas_server.post(f"/api/chat/{rude['id']}/answer", {"text": "Thanks!", "read_question": True})
    assert status == 422 and "s***" in refused["error"] and "sh1" not in refused["error"]
    assert canvas_server.post(f"/api/chat/{rude['id']}/answer", {"text": "Thanks for watching!"})[0] == 202
    wait_until_idle(canvas_server)


def test_nothing_a_viewer_wrote_is_spoken_without_a_click_or_the_auto_answer_switch(
        canvas_server: ServerProcess) -> None:
    wait_until_idle(canvas_server)
    quiet = {**SHOW, "id": "quiet", "read_questions": True,
             "segments": [{"title": "Jacket", "product": "jacket", "lines": [], "elements": ["card"]}]}
    assert canvas_server.post("/api/show/load", {"show": quiet})[0] == 200
    before = canvas_server.get("/api/stats")[1]
    asked_at = time.time()
    questions = [{"user": "v1", "text": "Is it waterproof?"}, {"user": "v2", "text": "say: buy now, it is waterproof"},
                 {"user": "v3", "text": "What sizes are there? Does it fit?"}]
    ids = [canvas_server.post("/api/chat", question)[1]["id"] for question in questions]

    async def bridge() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as client, client.ws_connect(
                f"{canvas_server.url}/api/chat/ingest?token={canvas_server.token}") as socket:
            await socket.send_str(json.dumps({"messages": [{"user": "v4", "text": "is it waterproof in rain",
                                                            "platform": "youtube", "time": time.time()}]}))
            await socket.send_str("not json")
            return [await socket.receive_json(timeout=10) for _ in range(2)]

    replies = run_async(bridge())
    assert replies[0]["type"] == "ok" and replies[1]["type"] == "error"
    ids += replies[0]["ids"]
    messages = {m["id"]: m for m in canvas_server.get("/api/chat")[1]["messages"]}
    assert all(messages[i]["state"] == "new" for i in ids)  # stored, every one matching a FAQ entry, none spoken
    # Then the switch goes on: the next matching question is answered without a click — and only it.
    assert http("PUT", canvas_server.url + "/api/show/auto_answer", {"enabled": True},
                headers=canvas_server.auth)[0] == 200
    trigger = canvas_server.post("/api/chat", {"user": "v5", "text": "does it keep me dry, is it waterproof?"})[1]
    wait_until(lambda: canvas_server.get("/api/stats")[1]["speaking"], 15, what="the auto-answer spoken")
    messages = {m["id"]: m for m in canvas_server.get("/api/chat")[1]["messages"]}
    assert messages[trigger["id"]]["state"] == "answered" and messages[trigger["id"]]["answered_by"] == "auto"
    assert all(messages[i]["state"] == "new" for i in ids)  # what came while it was off stays unspoken
    stats = canvas_server.get("/api/stats")[1]
    assert stats["interrupts"] == before["interrupts"]

    def stretches() -> list[dict[str, Any]]:  # "speaking" is logged when the speech plays out, after it is queued
        return [e for e in canvas_server.get("/api/log")[1]["events"]
                if e["at"] >= asked_at and e["kind"] == "speech" and e["message"] == "speaking"]

    wait_until(stretches, 10, every_s=0.1, what="the auto-answer playing out")
    wait_until_idle(canvas_server)
    speech = stretches()
    assert len(speech) == 1, speech  # one stretch of speech since the questions came: the auto-answer
    assert http("PUT", canvas_server.url + "/api/show/auto_answer", {"enabled": False},
                headers=canvas_server.auth)[0] == 200
    wait_until_idle(canvas_server)


@pytest.fixture
def agent() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny agent webhook on loopback: it answers from the product it is told about, and remembers what came."""
    asked: list[dict[str, Any]] = []
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        asked.append(body)
        if "your own voice" in body["question"]:  # an audio file, as a voice agent's TTS would make it
            return web.Response(body=espeak_wav("It is waterproof."), content_type="audio/wav")
        if "stream it" in body["question"]:  # raw PCM, streamed in chunks as it is made
            with wave.open(io.BytesIO(espeak_wav("Yes, it folds into its own pocket.")), "rb") as wav:
                rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
            streamed = web.StreamResponse(headers={"Content-Type": f"audio/pcm;rate={rate}"})
            await streamed.prepare(request)
            for start in range(0, len(pcm), 4800):
                await streamed.write(pcm[start : start + 4800])
                await asyncio.sleep(0.01)
            await streamed.write_eof()
            return streamed
        if "no rate" in body["question"]:
            return web.Response(body=b"\0" * 4800, content_type="audio/pcm")
        if "rude" in body["question"]:
            return web.json_response({"text": "Well, sh1t happens."})
        return web.json_response({"text": f"Good question, {body['user']}: the {body['product']['name']} is "
                                          f"{body['product']['price']} today."})

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/answer", answer)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        holder["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/answer"
        holder["loop"], holder["runner"] = loop, runner
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield holder["url"], asked
    holder["loop"].call_soon_threadsafe(holder["loop"].stop)
    thread.join(10)


def test_the_agent_webhook_answers_a_question_and_its_answer_is_screened(
        canvas_server: ServerProcess, agent: tuple[str, list[dict[str, Any]]]) -> None:
    url, asked = agent
    wait_until_idle(canvas_server)
    with_agent = {**SHOW, "id": "agent", "agent_url": url,
                  "segments": [{"title": "Jacket", "product": "jacket", "lines": [], "elements": ["card"]}]}
    assert canvas_server.post("/api/show/load", {"show": with_agent})[0] == 200
    message = canvas_server.post("/api/chat", {"user": "sam", "text": "how much is it?", "platform": "youtube"})[1]
    status, answered = canvas_server.post(f"/api/chat/{message['id']}/answer", {"source": "agent"})
    assert status == 202, answered
    assert answered["answer"] == "Good question, sam: the Packable rain jacket is $59 today."
    assert asked[-1]["question"] == "how much is it?" and asked[-1]["segment"] == "Jacket"
    rude = canvas_server.post("/api/chat", {"user": "sam", "text": "say something rude"})[1]
    status, refused = canvas_server.post(f"/api/chat/{rude['id']}/answer", {"source": "agent"})
    assert status == 422 and "agent's answer" in refused["error"]
    wait_until_idle(canvas_server)


def espeak_wav(text: str) -> bytes:
    """``text`` spoken by espeak-ng, as a WAV file's bytes."""
    return subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True, timeout=30).stdout


def test_an_agent_may_answer_in_its_own_voice_as_a_file_or_streamed_pcm(
        canvas_server: ServerProcess, agent: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = agent
    wait_until_idle(canvas_server)
    with_agent = {**SHOW, "id": "voiced", "agent_url": url,
                  "segments": [{"title": "Jacket", "product": "jacket", "lines": [], "elements": ["card"]}]}
    assert canvas_server.post("/api/show/load", {"show": with_agent})[0] == 200
    for question, words in (("answer in your own voice", "It is waterproof."),
                            ("stream it to me", "Yes, it folds into its own pocket.")):
        with wave.open(io.BytesIO(espeak_wav(words)), "rb") as wav:  # (espeak-ng's header gives no frame count)
            seconds = len(wav.readframes(wav.getnframes())) / wav.getsampwidth() / wav.getframerate()
        message = canvas_server.post("/api/chat", {"user": "kim", "text": question})[1]
        status, answered = canvas_server.post(f"/api/chat/{message['id']}/answer", {"source": "agent"})
        assert status == 202, answered
        assert answered["answer"] == f"(the agent's spoken answer, {seconds:.1f} s)"
        assert abs(answered["queued_s"] - seconds) < 0.1, (answered, seconds)  # all of it queued, none cut
        wait_until(lambda: canvas_server.get("/api/stats")[1]["speaking"], 10, what="the agent's voice playing")
        wait_until_idle(canvas_server)
    message = canvas_server.post("/api/chat", {"user": "kim", "text": "pcm with no rate"})[1]
    status, refused = canvas_server.post(f"/api/chat/{message['id']}/answer", {"source": "agent"})
    assert status == 502 and "audio/pcm without a rate" in refused["error"], refused


def test_product_pictures_are_checked_and_stored_as_png(canvas_server: ServerProcess) -> None:
    assert put_bytes(canvas_server, "/api/products/shoes/picture", b"")[0] == 400
    assert put_bytes(canvas_server, "/api/products/shoes/picture", b"not a picture at all")[0] == 422
    huge = io.BytesIO()  # a small file that declares a 9000×9000 picture
    Image.new("1", (9000, 9000)).save(huge, "PNG")
    status, body = put_bytes(canvas_server, "/api/products/shoes/picture", huge.getvalue())
    assert status == 422 and "9000×9000" in body["error"], body
    jpeg = io.BytesIO()
    Image.new("RGB", (1600, 900), (200, 40, 40)).save(jpeg, "JPEG")
    status, product = put_bytes(canvas_server, "/api/products/shoes/picture", jpeg.getvalue())
    assert status == 200 and product["has_picture"]
    stored = requests.get(canvas_server.url + "/api/products/shoes/picture", headers=canvas_server.auth, timeout=30)
    assert stored.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(stored.content)).size == (1024, 576)  # scaled to 1024 a side
    assert put_bytes(canvas_server, "/api/products/nothing/picture", jpeg.getvalue())[0] == 404
