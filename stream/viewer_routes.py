"""Viewer endpoints: the player page (also the OBS source), the dashboard page, WHEP and health."""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web
from multidict import CIMultiDict

from stream import ice
from stream.http_common import RUNTIME, read_sdp
from twincast import __version__
from twincast.errors import NotFoundError

STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css",
                "show.js": "text/javascript", "show.css": "text/css", "show.html": "text/html",
                "twins.js": "text/javascript", "twins.css": "text/css", "twins.html": "text/html"}


@functools.cache
def _static(name: str) -> str:
    """A packaged page or asset, read once per process."""
    return resources.files("stream").joinpath(f"static/{name}").read_text()


async def player_page(request: web.Request) -> web.Response:
    """The player page; ``?embed=1`` shows the video alone (an OBS browser source)."""
    return web.Response(text=_static("player.html"), content_type="text/html")


async def dashboard_page(request: web.Request) -> web.Response:
    """The operator dashboard (its data and live feed need the operator token)."""
    return web.Response(text=_static("dashboard.html"), content_type="text/html")


async def static_file(request: web.Request) -> web.Response:
    """The dashboard's script and style sheet."""
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise NotFoundError(f"no static file {name!r}")
    return web.Response(text=_static(name), content_type=STATIC_FILES[name],
                        headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    """Liveness for load balancers and compose health checks."""
    runtime = request.app[RUNTIME]
    return web.json_response({"status": "ok", "version": __version__, "sessions": len(runtime.channels),
                              "viewers": runtime.viewer_count})


async def whep_offer(request: web.Request) -> web.Response:
    """WHEP: an SDP offer in, ``201`` with the answer, the viewer's ``Location`` and the ICE servers (RFC 9725
    ``Link`` headers, TURN with fresh credentials) out."""
    offer = await read_sdp(request)
    runtime = request.app[RUNTIME]
    viewer_id, answer = await runtime.add_viewer(offer, request.query.get("session"))
    headers = CIMultiDict({"Location": f"/whep/{viewer_id}"})
    for server in ice.for_viewer(runtime.config):
        for link in server.link_headers():
            headers.add("Link", link)
    return web.Response(status=201, text=answer, content_type="application/sdp", headers=headers)


async def ice_servers(request: web.Request) -> web.Response:
    """The ICE servers a viewer's ``RTCPeerConnection`` should use (``{"iceServers": [...]}``), never cached."""
    servers = ice.for_viewer(request.app[RUNTIME].config)
    return web.json_response({"iceServers": [server.to_json() for server in servers]},
                             headers={"Cache-Control": "no-store"})


async def whep_delete(request: web.Request) -> web.Response:
    """WHEP: hang up a viewer."""
    await request.app[RUNTIME].remove_viewer(request.match_info["viewer_id"])
    return web.Response(status=204)
