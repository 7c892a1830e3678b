"""The route table, and the OpenAPI 3.1 document built from it (``GET /api/openapi.json``).

The app registers exactly these routes, so the document cannot drift from the code; and the JSON bodies are
checked against the same schemas (``check_json``), so what the document promises is what the server accepts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from twincast import __version__
from twincast.errors import InputError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_QUERY = {"name": "session", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "session id (default: the first twin's)"}
ERROR_TEXT = {
    400: "bad input: the message names the field, what came and what was expected",
    401: "missing or wrong token",
    404: "no such session, twin, viewer, upstream, line or output",
    413: "a body over its limit: max_body_bytes (an audio file), 64 KiB (JSON, SDP) or the speech queue "
         "(max_queued_speech_s); `limit` names it and its value",
    422: "well formed but unusable: text with nothing to speak, audio that does not decode",
    429: "too many requests from this address (operator_rate_per_s, operator_burst), or locked out after "
         "max_auth_failures wrong tokens within auth_lockout_s; `limit` names which, Retry-After says when to retry",
    502: "text to speech failed: espeak-ng ran and failed (e.g. it rejected its voice); the message is its own",
    503: "at capacity: max_sessions, max_viewers or max_viewers_per_session, `limit` names which; or text to "
         "speech is unavailable (espeak-ng is missing)",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}


PUBLIC_API = ("/api/openapi.json",)
VIEWER_API = ("/api/ice-servers",)  # under /api/ but for viewers: guarded like WHEP


def needs_operator(path: str) -> bool:
    """The auth rule: everything under ``/api/`` but the OpenAPI document and the viewers' ICE servers, and the
    WHIP ingest (``/whip``: a WHIP client such as OBS sends the token as its bearer token), needs the operator's
    bearer token."""
    return ((path.startswith("/api/") and path not in PUBLIC_API + VIEWER_API) or path == "/whip"
            or path.startswith("/whip/"))


def needs_viewer(path: str) -> bool:
    """What a viewer token, when one is set, guards: the player page, WHEP, the ICE servers and the overlay page."""
    return path in ("/", "/whep", "/overlay", *VIEWER_API) or path.startswith(("/whep/", "/overlay/"))


@dataclass(frozen=True)
class Route:
    """One HTTP route and how the OpenAPI document describes it."""

    method: str
    path: str  # aiohttp form, e.g. /api/{kind:mic|webcam}/{upstream_id}
    handler: Handler
    summary: str
    body: dict[str, Any] | None = None  # JSON schema of a JSON body, or {"content": media type, "schema"?: …}
    query: tuple[dict[str, Any], ...] = ()
    responses: dict[str, str] = field(default_factory=lambda: {"200": "OK"})
    errors: tuple[int, ...] = ()  # error statuses besides those every route of its kind has (see ``error_codes``)
    body_required: bool = True

    def error_codes(self, viewer_token: bool = True) -> list[int]:
        """Every error status this route answers: 400 and 404; 401 and 429 where a token guards it; 413 where it
        takes a body; and its own ``errors``."""
        codes = {400, 404, *self.errors}
        if self.operator or (viewer_token and needs_viewer(self.path)):
            codes |= {401, 429}
        if self.body is not None:
            codes.add(413)
        return sorted(codes)

    @property
    def operator(self) -> bool:
        """Whether the route needs the operator's token (see ``needs_operator``)."""
        return needs_operator(self.path)

    @property
    def openapi_path(self) -> str:
        """``/api/{kind:mic|webcam}`` → ``/api/{kind}``."""
        return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", self.path)


def build_document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "responses": {code: {"description": text} for code, text in route.responses.items()},
        }
        for code in route.error_codes():
            operation["responses"][str(code)] = _error_response(code)
        parameters = [{"name": name, "in": "path", "required": True, "schema": _path_schema(pattern)}
                      for name, pattern in re.findall(r"\{(\w+)(?::([^}]+))?\}", route.path)]
        parameters += list(route.query)
        if parameters:
            operation["parameters"] = parameters
        if route.operator:
            operation["security"] = [{"bearer": []}]
        if route.body is not None:
            if "content" in route.body:
                schema = route.body.get("schema", {"type": "string", "format": "binary"})  # a form's: its fields
                content = {route.body["content"]: {"schema": schema}}
            else:
                content = {"application/json": {"schema": route.body}}
            operation["requestBody"] = {"required": route.body_required, "content": content}
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "twincast", "version": __version__,
                 "description": "Live digital twins over WebRTC: viewer and operator API."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object", "required": ["error", "status"],
                "properties": {"error": {"type": "string"}, "type": {"type": "string"}, "status": {"type": "integer"},
                               "limit": {"type": "object", "required": ["name", "value"],
                                         "properties": {"name": {"type": "string"}, "value": {"type": "number"}},
                                         "description": "the limit that was hit: its setting and value"},
                               "retry_after_s": {"type": "number"}}}},
        },
    }


def _path_schema(pattern: str) -> dict[str, Any]:
    """The schema of a path parameter from its aiohttp pattern: ``\\d+`` a whole number, ``a|b`` one of those."""
    if pattern == r"\d+":
        return {"type": "integer", "minimum": 0}
    if pattern and re.fullmatch(r"[\w|]+", pattern):
        return {"type": "string", "enum": pattern.split("|")}
    return {"type": "string"} if not pattern else {"type": "string", "pattern": f"^(?:{pattern})$"}


def _error_response(code: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_TEXT[code],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if code in (429, 503):
        response["headers"] = RETRY_AFTER
    return response


def obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    """A JSON-schema object."""
    return {"type": "object", "required": list(required), "properties": properties,
            "additionalProperties": False}


STRING = {"type": "string"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
SESSION = {"type": ["string", "null"], "description": "session id (default, or null: the first twin's)"}


def check_json(schema: dict[str, Any], value: Any, where: str = "body") -> None:
    """Check a decoded JSON value against the subset of JSON Schema the route table uses (type, enum, required,
    properties, additionalProperties, items, minLength/maxLength, minimum/maximum, pattern).

    Raises:
        InputError: the first mismatch, naming the field, what came and what was expected.
    """
    if "enum" in schema and value not in schema["enum"]:
        raise InputError(f"{where} must be one of {', '.join(map(repr, schema['enum']))}; got {_shown(value)}")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not any(_is_kind(value, kind) for kind in kinds):
            raise InputError(f"{where} must be {' or '.join(kinds)}; got {_json_kind(value)} {_shown(value)}")
    if isinstance(value, dict):
        _check_object(schema, value, where)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check_json(schema["items"], item, f"{where}[{index}]")
    elif isinstance(value, str):
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if len(value) < low or (high is not None and len(value) > high):
            raise InputError(f"{where} must be {low}..{'∞' if high is None else high} characters long; "
                             f"got {len(value)}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise InputError(f"{where} {_shown(value)} does not match {schema['pattern']}")
    elif _is_kind(value, "number") and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        raise InputError(f"{where} must be in {schema.get('minimum', '-∞')}..{schema.get('maximum', '∞')}; "
                         f"got {value}")


def _check_object(schema: dict[str, Any], value: dict[str, Any], where: str) -> None:
    properties: dict[str, Any] = schema.get("properties", {})
    expected = _shape(schema)
    for key in schema.get("required", []):
        if value.get(key) is None:
            raise InputError(f'{where} needs "{key}"; expected {expected}')
    if schema.get("additionalProperties") is False:
        unknown = sorted(set(value) - set(properties))
        if unknown:
            raise InputError(f"{where} has unknown field {_shown(unknown[0])}; expected {expected}")
    for key, rule in properties.items():
        if key in value:
            check_json(rule, value[key], f'"{key}"')


def _shape(schema: dict[str, Any]) -> str:
    """``{"text": string, "session"?: string or null}``: an object schema in one line, for messages."""
    required = schema.get("required", [])
    fields = []
    for key, rule in schema.get("properties", {}).items():
        kind = rule.get("type", "any") if "enum" not in rule else " | ".join(map(repr, rule["enum"]))
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        fields.append(f'"{key}"{"" if key in required else "?"}: {kind}')
    return "{" + ", ".join(fields) + "}"


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, JSON_KINDS[kind])


def _json_kind(value: Any) -> str:
    for kind in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_kind(value, kind):
            return kind
    return type(value).__name__


def _shown(value: Any) -> str:
    """A value for a message, cut short (it came from the client)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


JSON_KINDS: dict[str, type | tuple[type, ...]] = {"null": type(None), "boolean": bool, "string": str, "array": list,
                                                  "object": dict}
