"""The HTTP surface: one aiohttp app on the same event loop as aiortc.

``GET /`` player page · ``POST /whep`` · ``DELETE /whep/{id}`` · ``GET /healthz`` · ``GET /api/stats`` ·
``POST /api/say`` · ``POST /api/interrupt``. Errors are JSON with a 4xx/5xx status, never 200.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from stream.runtime import MAX_SDP_BYTES, TwinRuntime
from twincast import __version__
from twincast.errors import InputError, TwincastError, UnauthorizedError

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RUNTIME: web.AppKey[TwinRuntime] = web.AppKey("runtime", TwinRuntime)
TOKEN: web.AppKey[str | None] = web.AppKey("operator_token", str)
MAX_JSON_BYTES = 64 * 1024
OPERATOR_PATHS = ("/api/say", "/api/interrupt")


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


@web.middleware
async def operator_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require ``Authorization: Bearer <token>`` on operator endpoints when a token is configured."""
    token = request.app[TOKEN]
    if token and request.path.startswith(OPERATOR_PATHS):
        header = request.headers.get("Authorization", "")
        supplied = header[len("Bearer "):] if header.startswith("Bearer ") else ""
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
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InputError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


async def player_page(request: web.Request) -> web.Response:
    page = resources.files("stream").joinpath("static/player.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response({"status": "ok", "version": __version__, "sessions": len(runtime.sessions),
                              "viewers": len(runtime.viewers)})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME].stats())


async def whep_offer(request: web.Request) -> web.Response:
    if request.content_type != "application/sdp":
        raise InputError(f"WHEP expects Content-Type application/sdp, got {request.content_type or 'none'}")
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise InputError(f"SDP offer of {request.content_length} bytes is over the {MAX_SDP_BYTES}-byte limit")
    offer = await request.text()
    viewer_id, answer = await request.app[RUNTIME].add_viewer(offer, request.query.get("session"))
    location = f"/whep/{viewer_id}"
    return web.Response(status=201, text=answer, content_type="application/sdp", headers={"Location": location})


async def whep_delete(request: web.Request) -> web.Response:
    await request.app[RUNTIME].remove_viewer(request.match_info["viewer_id"])
    return web.Response(status=204)


async def say(request: web.Request) -> web.Response:
    body = await read_json(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise InputError('body must be {"text": "…"} with a string text')
    session = request.app[RUNTIME].session(body.get("session"))
    queued = await session.say(text)
    return web.json_response(queued, status=202)


async def interrupt(request: web.Request) -> web.Response:
    body = await read_json(request) if request.can_read_body else {}
    return web.json_response(request.app[RUNTIME].session(body.get("session")).interrupt())


def create_app(runtime: TwinRuntime, operator_token: str | None) -> web.Application:
    """Build the aiohttp application around a started or to-be-started runtime."""
    app = web.Application(middlewares=[errors_as_json, operator_auth], client_max_size=MAX_JSON_BYTES)
    app[RUNTIME] = runtime
    app[TOKEN] = operator_token
    app.router.add_get("/", player_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/stats", stats)
    app.router.add_post("/api/say", say)
    app.router.add_post("/api/interrupt", interrupt)
    app.router.add_post("/whep", whep_offer)
    app.router.add_delete("/whep/{viewer_id}", whep_delete)

    async def on_startup(app: web.Application) -> None:
        await runtime.start()

    async def on_cleanup(app: web.Application) -> None:
        await runtime.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
