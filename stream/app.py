"""The HTTP surface: one aiohttp app on the same event loop as aiortc.

Routes live in one table (``ROUTES``) that both registers them and produces ``/api/openapi.json``; JSON bodies
are checked against the same table's schemas before a handler runs. Everything under ``/api/`` except the
OpenAPI document, and the WHIP ingest (``/whip``), needs the operator's bearer token; the viewer endpoints are
public unless a viewer token is set.
Operator requests are rate-limited per client address, and an address that sends ``max_auth_failures`` wrong
tokens is locked out for a while (``stream.limits``). Errors are JSON with a 4xx/5xx status, never 200; a limit
that was hit is named in the body with its value.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import urllib.parse
from typing import Any

from aiohttp import web

from avatar.speech import MAX_TEXT_CHARS
from stream import commerce_routes, twin_routes
from stream import operator_routes as op
from stream import viewer_routes as viewer
from stream.http_common import (
    AUTH_LOCKOUT,
    OPERATOR_TOKEN,
    RATE_LIMITER,
    RUNTIME,
    VIEWER_TOKEN,
    error_body,
    read_json,
)
from stream.limits import AuthLockout, RateLimiter
from stream.openapi import (
    INTEGER,
    SESSION,
    SESSION_QUERY,
    STRING,
    Handler,
    Route,
    build_document,
    check_json,
    needs_operator,
    needs_viewer,
    obj,
)
from stream.resources import debug_resources
from stream.runtime import SESSION_ID, TwinRuntime
from stream.show_routes import SHOW_ROUTES
from twincast.errors import LimitError, TwincastError, UnauthorizedError

log = logging.getLogger(__name__)


async def openapi_document(request: web.Request) -> web.Response:
    """This API, described (built once: the route table never changes)."""
    return web.json_response(_document())


@functools.cache
def _document() -> dict[str, Any]:
    return build_document(ROUTES)


WEBSOCKET = {"101": "switching to the WebSocket protocol"}
SPOKEN_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS}
RECORDING = {"type": "string", "description": "a file name (show.mp4), or a relative path (2026/show.mp4), inside "
                                             "the server's recordings directory (serve.recordings_dir)"}
MAX_YAW_DEG = MAX_PITCH_DEG = 90.0  # a scripted pose: beyond these no base frame could look like it
MAX_ROLL_DEG = 180.0


def degrees(limit: float) -> dict[str, Any]:
    """The schema of an angle in degrees, within ±``limit``."""
    return {"type": "number", "minimum": -limit, "maximum": limit, "description": "degrees"}


ROUTES: list[Route] = [
    Route("GET", "/", viewer.player_page, "Player page (?embed=1: video only, for OBS)"),
    Route("GET", "/dashboard", viewer.dashboard_page, "Operator dashboard (its data needs the token)"),
    Route("GET", "/static/{name}", viewer.static_file, "Dashboard script and style sheet"),
    Route("GET", "/healthz", viewer.healthz, "Liveness"),
    Route("POST", "/whep", viewer.whep_offer, "WHEP: watch a session (SDP offer → answer)",
          body={"content": "application/sdp"}, query=(SESSION_QUERY,),
          responses={"201": "SDP answer; Link: the ICE servers (RFC 9725, rel=\"ice-server\")"}, errors=(503,)),
    Route("DELETE", "/whep/{viewer_id}", viewer.whep_delete, "WHEP: hang up", responses={"204": "closed"}),
    Route("GET", "/api/ice-servers", viewer.ice_servers, "ICE servers for a viewer's RTCPeerConnection "
          "({iceServers: [RTCIceServer]}: STUN, and TURN with credentials good for serve.turn_ttl_s; empty when "
          "none are configured); guarded like WHEP"),
    Route("POST", "/whip", op.whip_offer, "WHIP ingest (OBS Studio 30+; the operator token as the bearer token): a "
          "sendonly audio (Opus) and/or video (H.264, VP8) offer; the audio is the twin's live speech, the video's "
          "head pose drives its head", body={"content": "application/sdp"}, query=(SESSION_QUERY,),
          responses={"201": "SDP answer; Location: the WHIP session"}),
    Route("DELETE", "/whip/{upstream_id}", op.whip_delete, "WHIP: end an ingest session", responses={"200": "ended"}),
    Route("GET", "/api/openapi.json", openapi_document, "This document"),
    Route("GET", "/api/auth", op.auth_check, "Check the bearer token"),
    Route("GET", "/api/stats", op.stats, "Health and counters of every session"),
    Route("GET", "/api/log", op.event_log, "Recent events"),
    Route("GET", "/api/debug/resources", debug_resources, "Peers, relay subscriptions, tasks, threads, file "
          "descriptors and memory of the server process (?collect=1: after a garbage collection and a heap trim)",
          query=({"name": "collect", "in": "query", "required": False, "schema": {"type": "string"}},)),
    Route("GET", "/api/events", op.events_socket, "WebSocket: live stats every 0.5 s and events",
          responses=WEBSOCKET),
    Route("POST", "/api/say", op.say, "Speak text after what is queued (control characters become spaces or "
          "are dropped)", body=obj(("text",), text=SPOKEN_TEXT, session=SESSION), responses={"202": "queued"},
          errors=(422, 502, 503)),
    Route("POST", "/api/interrupt", op.interrupt, "Barge-in: stop speech now", body=obj(session=SESSION),
          body_required=False),
    Route("POST", "/api/play", op.play, "Play an audio file after what is queued",
          body={"content": "application/octet-stream"}, query=(SESSION_QUERY,), responses={"202": "queued"},
          errors=(422,)),
    Route("GET", "/api/push", op.push, "WebSocket: an agent pushes 16-bit PCM; with ?version=2 it also hears when "
          "the twin's speech starts and stops playing (docs/avatar-protocol.md)",
          query=(SESSION_QUERY, {"name": "version", "in": "query", "required": False,
                                 "schema": {"type": "string", "enum": ["1", "2"]}}), responses=WEBSOCKET),
    Route("POST", "/api/{kind:mic|webcam}", op.upstream_offer, "Operator microphone or webcam upstream",
          body={"content": "application/sdp"}, query=(SESSION_QUERY,), responses={"201": "SDP answer"}),
    Route("DELETE", "/api/{kind:mic|webcam}/{upstream_id}", op.upstream_delete, "Disconnect an upstream",
          responses={"204": "closed"}),
    Route("POST", "/api/pose", op.pose, "Pose driver: loop, still, or a scripted pose",
          body=obj(mode={"enum": ["loop", "still", "script"]}, yaw=degrees(MAX_YAW_DEG),
                   pitch=degrees(MAX_PITCH_DEG), roll=degrees(MAX_ROLL_DEG),
                   base_index={"type": "integer", "minimum": 0}, session=SESSION)),
    Route("GET", "/api/sessions", op.list_sessions, "Sessions and twins"),
    Route("POST", "/api/sessions", op.create_session, "Start a session of a loaded twin",
          body=obj(("id",), id={"type": "string", "pattern": SESSION_ID.pattern}, twin=SESSION),
          responses={"201": "created"}, errors=(503,)),
    Route("DELETE", "/api/sessions/{session_id}", op.delete_session, "Stop a session",
          responses={"204": "stopped"}),
    Route("GET", "/api/outputs", op.list_outputs, "RTMP pushes, recordings, WHIP and Janus publishes"),
    Route("POST", "/api/outputs", op.create_output, "Start an RTMP push, a recording, a WHIP publish (url: the "
          "WHIP endpoint, token: its bearer token), or a Janus VideoRoom publish (url: janus://HOST:PORT/ROOM, "
          "optionally ?secret=…&create=0)",
          body=obj(kind={"enum": ["rtmp", "record", "whip", "janus"]}, url=STRING, key=STRING, path=RECORDING,
                   token=STRING, session=SESSION),
          responses={"201": "started"}),
    Route("DELETE", "/api/outputs/{output_id}", op.delete_output, "Stop an output"),
    Route("GET", "/api/script", op.get_script, "A session's script", query=(SESSION_QUERY,)),
    Route("POST", "/api/script", op.add_script_lines, "Add lines to the script",
          body=obj(lines={"type": "array", "items": STRING}, text=STRING, session=SESSION),
          responses={"201": "added"}),
    Route("PUT", "/api/script/order", op.reorder_script, "Reorder the script",
          body=obj(("order",), order={"type": "array", "items": INTEGER}, session=SESSION)),
    Route("DELETE", "/api/script/{line_id:\\d+}", op.delete_script_line, "Delete a line", query=(SESSION_QUERY,)),
    Route("POST", "/api/script/{line_id:\\d+}/speak", op.speak_script_line, "Speak a line now or next",
          body=obj(when={"enum": ["now", "next"]}, session=SESSION), responses={"202": "queued"},
          body_required=False, errors=(422, 502, 503)),
    *commerce_routes.COMMERCE_ROUTES,  # products, canvas, on-screen elements, /overlay
    *SHOW_ROUTES,  # shows, running them, viewer questions
    *twin_routes.TWIN_ROUTES,  # twins made from uploaded videos, their training jobs, going live
]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map twincast and HTTP errors to JSON bodies with the right status (a limit's name and value included)."""
    try:
        return await handler(request)
    except LimitError as exc:
        return error_body(exc.http_status, str(exc), type(exc).__name__, limit=(exc.limit, exc.value),
                          retry_after_s=exc.retry_after_s)
    except UnauthorizedError as exc:
        return error_body(exc.http_status, str(exc), type(exc).__name__, headers={"WWW-Authenticate": "Bearer"})
    except TwincastError as exc:
        return error_body(exc.http_status, str(exc), type(exc).__name__)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # a 405 says what is allowed
        return error_body(exc.status, exc.reason or "error", type(exc).__name__, headers=allow)
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
    """Whether ``supplied`` is ``token``, in constant time and blind to length: their SHA-256 digests are
    compared, never the strings (a header's undecodable bytes arrive as surrogates and are kept as such)."""
    return hmac.compare_digest(hashlib.sha256(supplied.encode("utf-8", "surrogatepass")).digest(),
                               hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest())


@web.middleware
async def require_tokens(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The operator token on ``/api/`` (but the OpenAPI document); the viewer token, if set, on viewing.

    Before the token is looked at, an operator request spends one of its address's ``operator_rate_per_s``
    tokens, and an address locked out after ``max_auth_failures`` wrong tokens is refused (429, even with the
    right token). A wrong token counts as a failure; a missing one does not (it guesses nothing).
    """
    path = request.path
    operator = needs_operator(path)
    viewer_token = request.app[VIEWER_TOKEN]
    viewing = bool(viewer_token) and needs_viewer(path)
    if not (operator or viewing):
        return await handler(request)
    client = request.remote or "unknown"
    config = request.app[RUNTIME].config
    if operator:
        wait_s = request.app[RATE_LIMITER].take(client)
        if wait_s:
            raise LimitError(f"too many operator requests from {client}: operator_rate_per_s is "
                             f"{config.operator_rate_per_s:g} (bursts of {config.operator_burst})",
                             limit="operator_rate_per_s", value=config.operator_rate_per_s, http_status=429,
                             retry_after_s=wait_s)
    locked_s = request.app[AUTH_LOCKOUT].locked_for(client)
    if locked_s:
        raise LimitError(f"{client} is locked out for {locked_s:.0f} s after {config.max_auth_failures} wrong tokens "
                         f"(max_auth_failures) within auth_lockout_s ({config.auth_lockout_s:g} s)",
                         limit="max_auth_failures", value=config.max_auth_failures, http_status=429,
                         retry_after_s=locked_s)
    supplied = _supplied_token(request)
    allowed = _matches(supplied, request.app[OPERATOR_TOKEN]) or (
        not operator and viewer_token is not None and _matches(supplied, viewer_token))
    if not allowed:
        if supplied:
            request.app[AUTH_LOCKOUT].failed(client)
        if operator:
            raise UnauthorizedError("operator endpoint: missing or wrong bearer token (Authorization: Bearer …)")
        raise UnauthorizedError("this stream needs a viewer token (?token=… or Authorization: Bearer …)")
    return await handler(request)


class RedactTokens(logging.Filter):
    """Blanks the tokens out of every record a handler it sits on emits, its traceback included.

    Nothing here logs a token, but aiohttp logs a malformed request line or header as it came ("Invalid header
    value char" with the raw ``Authorization`` line): a client with a broken header must not put its token in
    the server's log.
    """

    def __init__(self, tokens: list[str]) -> None:
        super().__init__()
        self.tokens = sorted({form for token in tokens for form in (token, urllib.parse.quote(token, safe=""))},
                             key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for token in self.tokens:
            text = text.replace(token, "[token]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place when it holds a token; never drops it."""
        message = record.getMessage()
        if any(token in message for token in self.tokens):
            record.msg, record.args = self._redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


def _checking_body(route: Route) -> Handler:
    """``route``'s handler, after its JSON body is checked against the route's schema (the handler reads it
    again: aiohttp keeps the bytes)."""
    schema = route.body
    assert schema is not None

    async def checked(request: web.Request) -> web.StreamResponse:
        if route.body_required or request.can_read_body:
            check_json(schema, await read_json(request))
        return await route.handler(request)

    return checked


def create_app(runtime: TwinRuntime, operator_token: str, viewer_token: str | None = None) -> web.Application:
    """Build the aiohttp application around a to-be-started runtime (its ``config`` holds the limits)."""
    if not operator_token:
        raise ValueError("an operator token is required")
    config = runtime.config
    app = web.Application(middlewares=[errors_as_json, require_tokens], client_max_size=config.max_body_bytes)
    app[RUNTIME] = runtime
    app[OPERATOR_TOKEN] = operator_token
    app[VIEWER_TOKEN] = viewer_token
    app[RATE_LIMITER] = RateLimiter(config.operator_rate_per_s, config.operator_burst)
    app[AUTH_LOCKOUT] = AuthLockout(config.max_auth_failures, config.auth_lockout_s)
    commerce_routes.setup(app)
    twin_routes.setup(app)
    for route in ROUTES:
        json_body = route.body is not None and "content" not in route.body
        app.router.add_route(route.method, route.path, _checking_body(route) if json_body else route.handler)

    redact = RedactTokens([token for token in (operator_token, viewer_token, config.turn_secret) if token])
    log_handlers = [*logging.getLogger().handlers, logging.lastResort]

    async def on_startup(app: web.Application) -> None:
        for handler in log_handlers:
            if handler is not None:
                handler.addFilter(redact)
        await runtime.start()

    async def on_cleanup(app: web.Application) -> None:
        await runtime.stop()
        for handler in log_handlers:
            if handler is not None:
                handler.removeFilter(redact)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


__all__ = ["ROUTES", "create_app"]
