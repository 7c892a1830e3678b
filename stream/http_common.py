"""What every HTTP handler shares: the app's keys, JSON errors, and reading request bodies.

Bodies are read as bytes under a limit (``read_body``) and decoded here, so a bad encoding, a body nested too
deeply, a number JSON cannot hold or SDP that aiortc cannot parse is a 400 naming the problem, never a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web
from aiortc.sdp import SessionDescription

from stream.limits import AuthLockout, RateLimiter
from stream.peers import MAX_SDP_BYTES
from stream.runtime import TwinRuntime
from twincast.errors import InputError, LimitError

RUNTIME: web.AppKey[TwinRuntime] = web.AppKey("runtime", TwinRuntime)
OPERATOR_TOKEN: web.AppKey[str] = web.AppKey("operator_token", str)
VIEWER_TOKEN: web.AppKey[str | None] = web.AppKey("viewer_token", str)
RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter", RateLimiter)
AUTH_LOCKOUT: web.AppKey[AuthLockout] = web.AppKey("auth_lockout", AuthLockout)
MAX_JSON_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 8  # a WHEP viewer offers 2 (video, audio), a microphone or a webcam 1
# What aiortc's SDP parser raises on text it cannot read (it asserts on a bad m= line, and looks codecs up with
# next()): any of these is the offer's fault, so a 400.
SDP_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AssertionError, AttributeError, StopIteration)
SDP_SILENT_ERRORS: dict[type[Exception], str] = {  # those that come without a message
    AssertionError: "an m= line is malformed or lists a payload type outside 0..255",
    StopIteration: "an a= line names a payload type that its m= line does not list",
}


def error_body(status: int, message: str, kind: str, *, limit: tuple[str, float] | None = None,
               retry_after_s: float | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error response; with ``limit`` (its setting's name and value) and ``retry_after_s`` when a limit
    was hit (the latter also as a ``Retry-After`` header, in whole seconds)."""
    body: dict[str, Any] = {"error": message, "type": kind, "status": status}
    headers = dict(headers or {})
    if limit is not None:
        body["limit"] = {"name": limit[0], "value": limit[1]}
    if retry_after_s is not None:
        body["retry_after_s"] = round(retry_after_s, 3)
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return web.json_response(body, status=status, headers=headers)


async def read_body(request: web.Request, limit_bytes: int, limit_name: str, what: str) -> bytes:
    """The request body, refused (413) when it declares or turns out to be over ``limit_bytes``.

    Raises:
        LimitError: over ``limit_bytes``, or over the server's ``max_body_bytes`` as it arrived.
    """
    declared = request.content_length
    if declared is not None and declared > limit_bytes:
        raise LimitError(f"{what} of {declared} bytes is over the {limit_bytes}-byte limit ({limit_name})",
                         limit=limit_name, value=limit_bytes, http_status=413)
    try:
        payload = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[RUNTIME].config.max_body_bytes
        raise LimitError(f"{what} is over the {limit}-byte limit (max_body_bytes)", limit="max_body_bytes",
                         value=limit, http_status=413) from exc
    if len(payload) > limit_bytes:
        raise LimitError(f"{what} of {len(payload)} bytes is over the {limit_bytes}-byte limit ({limit_name})",
                         limit=limit_name, value=limit_bytes, http_status=413)
    return payload


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def parse_json(raw: bytes) -> Any:
    """Decode a JSON document (UTF-8, -16 or -32), refusing NaN, Infinity and numbers beyond a double.

    Raises:
        InputError: not JSON, not text, or nested too deeply; the message says which.
    """
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise InputError("request body is nested too deeply to be read") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits, NaN
        raise InputError(f"request body is not valid JSON: {exc}") from exc


async def read_json(request: web.Request) -> dict[str, Any]:
    """Parse a JSON object body, naming what was wrong.

    Raises:
        InputError: wrong content type, not JSON, or not an object.
        LimitError: over ``MAX_JSON_BYTES`` (413).
    """
    if request.content_type != "application/json":
        raise InputError(f"expected Content-Type application/json, got {request.content_type or 'none'}")
    body = parse_json(await read_body(request, MAX_JSON_BYTES, "max_json_bytes", "JSON body"))
    if not isinstance(body, dict):
        raise InputError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


async def read_optional_json(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or {} when the request has none (``body_exists``: ``can_read_body`` turns False once the
    body was read, as the route's schema check reads it first, and the body would then be taken for absent)."""
    return await read_json(request) if request.body_exists else {}


async def read_sdp(request: web.Request) -> str:
    """The SDP offer of a WHEP/WHIP-style request, checked to be readable (``check_sdp``).

    Raises:
        InputError: wrong content type, not UTF-8, or not parseable SDP.
        LimitError: over ``MAX_SDP_BYTES`` (413).
    """
    if request.content_type != "application/sdp":
        raise InputError(f"expected Content-Type application/sdp, got {request.content_type or 'none'}")
    raw = await read_body(request, MAX_SDP_BYTES, "max_sdp_bytes", "SDP offer")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the SDP offer is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    check_sdp(text)
    return text


def check_sdp(text: str) -> None:
    """Parse ``text`` as SDP the way aiortc will, before any peer is made for it.

    Raises:
        InputError: empty, holding control characters, or not parseable; the message says why.
    """
    if not text.strip():
        raise InputError("the SDP offer is empty; expected an SDP offer starting with v=0")
    bad = next((char for char in text if ord(char) < 32 and char not in "\r\n\t"), None)
    if bad is not None:
        raise InputError(f"the SDP offer holds the control character {bad!r}; SDP is lines of text")
    try:
        description = SessionDescription.parse(text)
    except SDP_PARSE_ERRORS as exc:
        reason = str(exc) or SDP_SILENT_ERRORS.get(type(exc), type(exc).__name__)
        raise InputError(f"the SDP offer could not be parsed ({reason}); expected an SDP offer from a WebRTC "
                         "peer (RFC 8866)") from exc
    # What aiortc takes for granted when it applies an offer (it fails with an AttributeError otherwise), and a
    # bound on what one offer may make the server build (a transceiver, maybe a transport, per section).
    if len(description.media) > MAX_MEDIA_SECTIONS:
        raise InputError(f"the SDP offer has {len(description.media)} media sections; at most "
                         f"{MAX_MEDIA_SECTIONS} are accepted")
    mids = [media.rtp.muxId for media in description.media]
    for media in description.media:
        if media.kind in ("audio", "video") and media.dtls is None:
            raise InputError(f"the SDP offer's m={media.kind} section has no a=setup line (its DTLS role); every "
                             "WebRTC media section needs one")
        if not media.rtp.muxId or mids.count(media.rtp.muxId) > 1:
            raise InputError(f"the SDP offer's m={media.kind} section needs an a=mid of its own; got "
                             f"{media.rtp.muxId!r} (mids: {mids})")
    for group in description.group:
        if group.semantic == "BUNDLE" and sorted(map(str, group.items)) != sorted(map(str, mids)):
            raise InputError(f"the SDP offer bundles mids {group.items} but its media sections have mids {mids}; "
                             "a BUNDLE group must name every section")


def optional_str(body: dict[str, Any], key: str) -> str | None:
    """A string field that may be absent."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InputError(f'"{key}" must be a string')
    return value


def int_param(request: web.Request, name: str) -> int:
    """An integer path parameter."""
    try:
        return int(request.match_info[name])
    except ValueError as exc:
        raise InputError(f"{name} must be an integer, got {request.match_info[name]!r}") from exc
