"""The route table, and the OpenAPI 3.1 document built from it (``GET /api/openapi.json``).

The app registers exactly these routes, so the document cannot drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from twincast import __version__

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_QUERY = {"name": "session", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "session id (default: the first twin's)"}
ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


PUBLIC_API = ("/api/openapi.json",)


def needs_operator(path: str) -> bool:
    """The auth rule: everything under ``/api/`` but the OpenAPI document needs the operator's bearer token."""
    return path.startswith("/api/") and path not in PUBLIC_API


@dataclass(frozen=True)
class Route:
    """One HTTP route and how the OpenAPI document describes it."""

    method: str
    path: str  # aiohttp form, e.g. /api/{kind:mic|webcam}/{upstream_id}
    handler: Handler
    summary: str
    body: dict[str, Any] | None = None  # JSON schema of a JSON body, or {"content": media type}
    query: tuple[dict[str, Any], ...] = ()
    responses: dict[str, str] = field(default_factory=lambda: {"200": "OK"})

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
        operation["responses"].update({"400": ERROR, "404": ERROR} if route.method != "GET" else {"404": ERROR})
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"\{(\w+)", route.path)]
        parameters += list(route.query)
        if parameters:
            operation["parameters"] = parameters
        if route.operator:
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = ERROR
        if route.body is not None:
            if "content" in route.body:
                operation["requestBody"] = {"required": True, "content": {route.body["content"]: {}}}
            else:
                operation["requestBody"] = {"required": True,
                                            "content": {"application/json": {"schema": route.body}}}
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "twincast", "version": __version__,
                 "description": "Live digital twins over WebRTC: viewer and operator API."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error", "status"],
                                  "properties": {"error": {"type": "string"}, "type": {"type": "string"},
                                                 "status": {"type": "integer"}}}},
        },
    }


def obj(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    """A JSON-schema object."""
    return {"type": "object", "required": list(required), "properties": properties,
            "additionalProperties": False}


STRING = {"type": "string"}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
