"""The HTTP surface: one aiohttp app on the same event loop as aiortc.

Routes live in one table (``ROUTES``) that both registers them and produces ``/api/openapi.json``. Everything
under ``/api/`` except the OpenAPI document needs the operator's bearer token; the viewer endpoints are public
unless a viewer token is set. Errors are JSON with a 4xx/5xx status, never 200.
"""

from __future__ import annotations

import functools
import hmac
import logging
from typing import Any

from aiohttp import web

from stream import operator_routes as op
from stream import viewer_routes as viewer
from stream.http_common import (
    MAX_AUDIO_FILE_BYTES,
    OPERATOR_TOKEN,
    RUNTIME,
    VIEWER_TOKEN,
    error_body,
)
from stream.openapi import (
    INTEGER,
    NUMBER,
    SESSION_QUERY,
    STRING,
    Handler,
    Route,
    build_document,
    needs_operator,
    obj,
)
from stream.runtime import TwinRuntime
from twincast.errors import TwincastError, UnauthorizedError

log = logging.getLogger(__name__)


async def openapi_document(request: web.Request) -> web.Response:
    """This API, described (built once: the route table never changes)."""
    return web.json_response(_document())


@functools.cache
def _document() -> dict[str, Any]:
    return build_document(ROUTES)


ROUTES: list[Route] = [
    Route("GET", "/", viewer.player_page, "Player page (?embed=1: video only, for OBS)"),
    Route("GET", "/dashboard", viewer.dashboard_page, "Operator dashboard (its data needs the token)"),
    Route("GET", "/static/{name}", viewer.static_file, "Dashboard script and style sheet"),
    Route("GET", "/healthz", viewer.healthz, "Liveness"),
    Route("POST", "/whep", viewer.whep_offer, "WHEP: watch a session (SDP offer → answer)",
          body={"content": "application/sdp"}, query=(SESSION_QUERY,), responses={"201": "SDP answer"}),
    Route("DELETE", "/whep/{viewer_id}", viewer.whep_delete, "WHEP: hang up", responses={"204": "closed"}),
    Route("GET", "/api/openapi.json", openapi_document, "This document"),
    Route("GET", "/api/auth", op.auth_check, "Check the bearer token"),
    Route("GET", "/api/stats", op.stats, "Health and counters of every session"),
    Route("GET", "/api/log", op.event_log, "Recent events"),
    Route("GET", "/api/events", op.events_socket, "WebSocket: live stats every 0.5 s and events"),
    Route("POST", "/api/say", op.say, "Speak text after what is queued",
          body=obj(("text",), text=STRING, session=STRING), responses={"202": "queued"}),
    Route("POST", "/api/interrupt", op.interrupt, "Barge-in: stop speech now", body=obj(session=STRING)),
    Route("POST", "/api/play", op.play, "Play an audio file after what is queued",
          body={"content": "application/octet-stream"}, query=(SESSION_QUERY,), responses={"202": "queued"}),
    Route("GET", "/api/push", op.push, "WebSocket: an agent pushes 16-bit PCM (see stream/push.py)",
          query=(SESSION_QUERY,)),
    Route("POST", "/api/{kind:mic|webcam}", op.upstream_offer, "Operator microphone or webcam upstream",
          body={"content": "application/sdp"}, query=(SESSION_QUERY,), responses={"201": "SDP answer"}),
    Route("DELETE", "/api/{kind:mic|webcam}/{upstream_id}", op.upstream_delete, "Disconnect an upstream",
          responses={"204": "closed"}),
    Route("POST", "/api/pose", op.pose, "Pose driver: loop, still, or a scripted pose",
          body=obj(mode={"enum": ["loop", "still", "script"]}, yaw=NUMBER, pitch=NUMBER, roll=NUMBER,
                   base_index=INTEGER, session=STRING)),
    Route("GET", "/api/sessions", op.list_sessions, "Sessions and twins"),
    Route("POST", "/api/sessions", op.create_session, "Start a session of a loaded twin",
          body=obj(("id",), id=STRING, twin=STRING), responses={"201": "created"}),
    Route("DELETE", "/api/sessions/{session_id}", op.delete_session, "Stop a session",
          responses={"204": "stopped"}),
    Route("GET", "/api/outputs", op.list_outputs, "RTMP pushes and recordings"),
    Route("POST", "/api/outputs", op.create_output, "Start an RTMP push or a recording",
          body=obj(kind={"enum": ["rtmp", "record"]}, url=STRING, key=STRING, path=STRING, session=STRING),
          responses={"201": "started"}),
    Route("DELETE", "/api/outputs/{output_id}", op.delete_output, "Stop an output"),
    Route("GET", "/api/script", op.get_script, "A session's script", query=(SESSION_QUERY,)),
    Route("POST", "/api/script", op.add_script_lines, "Add lines to the script",
          body=obj(lines={"type": "array", "items": STRING}, text=STRING, session=STRING),
          responses={"201": "added"}),
    Route("PUT", "/api/script/order", op.reorder_script, "Reorder the script",
          body=obj(("order",), order={"type": "array", "items": INTEGER}, session=STRING)),
    Route("DELETE", "/api/script/{line_id}", op.delete_script_line, "Delete a line", query=(SESSION_QUERY,)),
    Route("POST", "/api/script/{line_id}/speak", op.speak_script_line, "Speak a line now or next",
          body=obj(when={"enum": ["now", "next"]}, session=STRING), responses={"202": "queued"}),
]


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


def _supplied_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):]
    # Browsers cannot set headers on WebSockets or media elements: those may pass ?token= instead.
    return request.query.get("token", "")


def _matches(supplied: str, token: str) -> bool:
    return hmac.compare_digest(supplied.encode(), token.encode())


@web.middleware
async def require_tokens(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The operator token on ``/api/`` (but the OpenAPI document); the viewer token, if set, on viewing."""
    path = request.path
    if needs_operator(path):
        if not _matches(_supplied_token(request), request.app[OPERATOR_TOKEN]):
            raise UnauthorizedError("operator endpoint: missing or wrong bearer token (Authorization: Bearer …)")
    viewer_token = request.app[VIEWER_TOKEN]
    if viewer_token and (path == "/" or path.startswith("/whep")):
        supplied = _supplied_token(request)
        if not (_matches(supplied, viewer_token) or _matches(supplied, request.app[OPERATOR_TOKEN])):
            raise UnauthorizedError("this stream needs a viewer token (?token=… or Authorization: Bearer …)")
    return await handler(request)


def create_app(runtime: TwinRuntime, operator_token: str, viewer_token: str | None = None) -> web.Application:
    """Build the aiohttp application around a to-be-started runtime."""
    if not operator_token:
        raise ValueError("an operator token is required")
    app = web.Application(middlewares=[errors_as_json, require_tokens], client_max_size=MAX_AUDIO_FILE_BYTES)
    app[RUNTIME] = runtime
    app[OPERATOR_TOKEN] = operator_token
    app[VIEWER_TOKEN] = viewer_token
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)

    async def on_startup(app: web.Application) -> None:
        await runtime.start()

    async def on_cleanup(app: web.Application) -> None:
        await runtime.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


__all__ = ["ROUTES", "create_app"]
