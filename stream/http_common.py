"""What every HTTP handler shares: the app's keys, JSON errors, and reading request bodies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from stream.peers import MAX_SDP_BYTES
from stream.runtime import TwinRuntime
from twincast.errors import InputError, PayloadTooLargeError

RUNTIME: web.AppKey[TwinRuntime] = web.AppKey("runtime", TwinRuntime)
OPERATOR_TOKEN: web.AppKey[str] = web.AppKey("operator_token", str)
VIEWER_TOKEN: web.AppKey[str | None] = web.AppKey("viewer_token", str)
MAX_JSON_BYTES = 64 * 1024
MAX_AUDIO_FILE_BYTES = 20 * 1024 * 1024


def error_body(status: int, message: str, kind: str) -> web.Response:
    """A JSON error response."""
    return web.json_response({"error": message, "type": kind, "status": status}, status=status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """Parse a JSON object body, naming what was wrong.

    Raises:
        InputError: wrong content type, not JSON, or not an object.
        PayloadTooLargeError: over ``MAX_JSON_BYTES``.
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


async def read_optional_json(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or {} when the request has none."""
    return await read_json(request) if request.can_read_body else {}


async def read_sdp(request: web.Request) -> str:
    """The SDP offer of a WHEP/WHIP-style request."""
    if request.content_type != "application/sdp":
        raise InputError(f"expected Content-Type application/sdp, got {request.content_type or 'none'}")
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise PayloadTooLargeError(f"SDP offer of {request.content_length} bytes is over the {MAX_SDP_BYTES} limit")
    return await request.text()


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
