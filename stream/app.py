"""The HTTP surface: one aiohttp app on the same event loop as aiortc.

Viewers: ``GET /`` player page · ``POST /whep`` · ``DELETE /whep/{id}`` · ``GET /healthz``.
Operator (bearer token when one is configured): ``GET /api/stats`` · ``POST /api/say`` · ``POST /api/interrupt`` ·
``POST /api/play`` (an audio file) · ``GET /api/push`` (agent WebSocket, see ``stream.push``) ·
``POST|DELETE /api/mic``, ``/api/webcam`` (upstream WebRTC) · ``POST /api/pose`` · ``GET|POST|DELETE
/api/sessions`` · ``GET|POST|DELETE /api/outputs``. Errors are JSON with a 4xx/5xx status, never 200.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import av
import numpy as np
from aiohttp import WSMsgType, web

from avatar.speech import Speech
from stream.push import PushProtocol
from stream.runtime import MAX_SDP_BYTES, TwinRuntime
from twincast import __version__
from twincast.errors import (
    InputError,
    PayloadTooLargeError,
    TwincastError,
    UnauthorizedError,
    UnprocessableError,
)

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RUNTIME: web.AppKey[TwinRuntime] = web.AppKey("runtime", TwinRuntime)
TOKEN: web.AppKey[str | None] = web.AppKey("operator_token", str)
MAX_JSON_BYTES = 64 * 1024
MAX_AUDIO_FILE_BYTES = 20 * 1024 * 1024


def error_body(status: int, message: str, kind: str) -> web.Response:
    """A JSON error response."""
    return web.json_response({"error": message, "type": kind, "status": status}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map twincast and HTTP errors to JSON bodies with the right status."""
    try:
        return await handler(request)
    except TwincastError as exc:
        return error_body(exc.http_status, str(exc), type(exc).__name__)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_body(exc.status, exc.reason or "error", type(exc).__name__)
    except Exception:  # the HTTP boundary: a bug becomes a logged 500 with a JSON body, never an HTML page
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_body(500, "internal error; see the server log", "InternalError")


def is_operator_path(path: str) -> bool:
    """Operator endpoints: everything under ``/api/``."""
    return path.startswith("/api/")


@web.middleware
async def operator_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require ``Authorization: Bearer <token>`` on operator endpoints when a token is configured.

    Browsers cannot set headers on a WebSocket, so ``/api/push`` also accepts ``?token=`` .
    """
    token = request.app[TOKEN]
    if token and is_operator_path(request.path):
        header = request.headers.get("Authorization", "")
        supplied = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        if not supplied and request.path == "/api/push":
            supplied = request.query.get("token", "")
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            raise UnauthorizedError("operator endpoint: missing or wrong bearer token (Authorization: Bearer …)")
    return await handler(request)


async def read_json(request: web.Request) -> dict[str, Any]:
    """Parse a JSON object body, naming what was wrong.

    Raises:
        InputError: wrong content type, not JSON, or not an object.
    """
    if request.content_type != "application/json":
        raise InputError(f"expected Content-Type application/json, got {request.content_type or 'none'}")
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise PayloadTooLargeError(f"JSON body of {request.content_length} bytes is over the {MAX_JSON_BYTES} limit")
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InputError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


async def read_sdp(request: web.Request) -> str:
    """The SDP offer of a WHEP/WHIP-style request."""
    if request.content_type != "application/sdp":
        raise InputError(f"expected Content-Type application/sdp, got {request.content_type or 'none'}")
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise InputError(f"SDP offer of {request.content_length} bytes is over the {MAX_SDP_BYTES}-byte limit")
    return await request.text()


def optional_str(body: dict[str, Any], key: str) -> str | None:
    """A string field that may be absent."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InputError(f'"{key}" must be a string')
    return value


def decode_audio_file(payload: bytes) -> Speech:
    """Decode any audio file PyAV reads (wav, mp3, ogg, m4a, …) to mono float.

    Raises:
        UnprocessableError: not decodable audio, or no samples.
    """
    try:
        with av.open(io.BytesIO(payload), mode="r") as container:
            if not container.streams.audio:
                raise UnprocessableError("the uploaded file has no audio stream; expected wav, mp3, ogg or m4a")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or 48_000
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts = [out.to_ndarray().reshape(-1) for frame in container.decode(stream)
                     for out in resampler.resample(frame)]
            parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.error.FFmpegError as exc:
        raise UnprocessableError(f"the uploaded file is not decodable audio: {exc}") from exc
    if not parts:
        raise UnprocessableError("the uploaded audio holds no samples")
    return Speech(np.concatenate(parts).astype(np.float32), rate)


# --- viewer endpoints -----------------------------------------------------------------------------------------

async def player_page(request: web.Request) -> web.Response:
    page = resources.files("stream").joinpath("static/player.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response({"status": "ok", "version": __version__, "sessions": len(runtime.sessions),
                              "viewers": len(runtime.viewers)})


async def whep_offer(request: web.Request) -> web.Response:
    offer = await read_sdp(request)
    viewer_id, answer = await request.app[RUNTIME].add_viewer(offer, request.query.get("session"))
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={"Location": f"/whep/{viewer_id}"})


async def whep_delete(request: web.Request) -> web.Response:
    await request.app[RUNTIME].remove_viewer(request.match_info["viewer_id"])
    return web.Response(status=204)


# --- operator endpoints ---------------------------------------------------------------------------------------

async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME].stats())


async def say(request: web.Request) -> web.Response:
    body = await read_json(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise InputError('body must be {"text": "…"} with a string text')
    session = request.app[RUNTIME].session(optional_str(body, "session"))
    return web.json_response(await session.say(text), status=202)


async def interrupt(request: web.Request) -> web.Response:
    body = await read_json(request) if request.can_read_body else {}
    return web.json_response(request.app[RUNTIME].session(optional_str(body, "session")).interrupt())


async def play(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_AUDIO_FILE_BYTES:
        raise PayloadTooLargeError(
            f"audio file of {request.content_length} bytes is over the {MAX_AUDIO_FILE_BYTES}-byte limit")
    payload = await request.read()
    if not payload:
        raise InputError("the request body is empty; expected the bytes of an audio file")
    session = request.app[RUNTIME].session(request.query.get("session"))
    speech = await asyncio.get_running_loop().run_in_executor(None, decode_audio_file, payload)
    frames = await session.queue_speech(speech)
    return web.json_response({"queued_s": round(frames / session.clock.fps, 3),
                              "queue_s": round(len(session.audio_queue) / session.clock.fps, 3)}, status=202)


async def push(request: web.Request) -> web.WebSocketResponse:
    session = request.app[RUNTIME].session(request.query.get("session"))
    socket = web.WebSocketResponse(max_msg_size=1 << 20, heartbeat=20)
    await socket.prepare(request)
    protocol = PushProtocol(session)
    await socket.send_json(protocol.hello())
    async for message in socket:
        if message.type == WSMsgType.TEXT:
            replies = protocol.on_text(message.data)
        elif message.type == WSMsgType.BINARY:
            replies = protocol.on_binary(message.data)
        else:
            break
        for reply in replies:
            await socket.send_json(reply)
    return socket


async def upstream_offer(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    offer = await read_sdp(request)
    upstream_id, answer = await request.app[RUNTIME].add_upstream(kind, offer, request.query.get("session"))
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={"Location": f"/api/{kind}/{upstream_id}"})


async def upstream_delete(request: web.Request) -> web.Response:
    await request.app[RUNTIME].remove_upstream(request.match_info["upstream_id"])
    return web.Response(status=204)


async def pose(request: web.Request) -> web.Response:
    body = await read_json(request)
    session = request.app[RUNTIME].session(optional_str(body, "session"))
    mode = body.get("mode", "script")
    if mode == "script":
        try:
            angles = [float(body.get(axis, 0.0)) for axis in ("yaw", "pitch", "roll")]
        except (TypeError, ValueError) as exc:
            raise InputError("yaw, pitch and roll must be numbers (degrees)") from exc
        session.pose.script(*angles)
    elif mode == "still":
        index = body.get("base_index")
        if index is not None and not isinstance(index, int):
            raise InputError('"base_index" must be an integer')
        session.pose.set_mode("still", still_index=index)
    else:
        session.pose.set_mode(str(mode))
    return web.json_response(session.pose.describe())


async def list_sessions(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response({"sessions": [{"id": key, "twin": s.twin.name} for key, s in runtime.sessions.items()],
                              "twins": sorted(runtime.twins)})


async def create_session(request: web.Request) -> web.Response:
    body = await read_json(request)
    runtime = request.app[RUNTIME]
    session_id, twin = optional_str(body, "id"), optional_str(body, "twin")
    if not session_id:
        raise InputError('body must name the new session: {"id": "…", "twin": "…"}')
    session = runtime.add_session(session_id, twin or runtime.sessions[runtime.default_session_id].twin.name)
    return web.json_response({"id": session.session_id, "twin": session.twin.name}, status=201)


async def delete_session(request: web.Request) -> web.Response:
    await request.app[RUNTIME].remove_session(request.match_info["session_id"])
    return web.Response(status=204)


async def list_outputs(request: web.Request) -> web.Response:
    return web.json_response({"outputs": [o.describe() for o in request.app[RUNTIME].outputs.values()]})


async def create_output(request: web.Request) -> web.Response:
    body = await read_json(request)
    kind = optional_str(body, "kind") or "rtmp"
    target = optional_str(body, "url") if kind == "rtmp" else optional_str(body, "path")
    if not target:
        raise InputError('an rtmp output needs "url"; a record output needs "path"')
    output = request.app[RUNTIME].add_output(kind, target, optional_str(body, "session"))
    return web.json_response(output.describe(), status=201)


async def delete_output(request: web.Request) -> web.Response:
    return web.json_response(await request.app[RUNTIME].remove_output(request.match_info["output_id"]))


def create_app(runtime: TwinRuntime, operator_token: str | None) -> web.Application:
    """Build the aiohttp application around a to-be-started runtime."""
    app = web.Application(middlewares=[errors_as_json, operator_auth], client_max_size=MAX_AUDIO_FILE_BYTES)
    app[RUNTIME] = runtime
    app[TOKEN] = operator_token
    app.router.add_get("/", player_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/whep", whep_offer)
    app.router.add_delete("/whep/{viewer_id}", whep_delete)
    app.router.add_get("/api/stats", stats)
    app.router.add_post("/api/say", say)
    app.router.add_post("/api/interrupt", interrupt)
    app.router.add_post("/api/play", play)
    app.router.add_get("/api/push", push)
    app.router.add_post("/api/{kind:mic|webcam}", upstream_offer)
    app.router.add_delete("/api/{kind:mic|webcam}/{upstream_id}", upstream_delete)
    app.router.add_post("/api/pose", pose)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_post("/api/sessions", create_session)
    app.router.add_delete("/api/sessions/{session_id}", delete_session)
    app.router.add_get("/api/outputs", list_outputs)
    app.router.add_post("/api/outputs", create_output)
    app.router.add_delete("/api/outputs/{output_id}", delete_output)

    async def on_startup(app: web.Application) -> None:
        await runtime.start()

    async def on_cleanup(app: web.Application) -> None:
        await runtime.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
