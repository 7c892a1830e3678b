"""Operator endpoints of live commerce, part one: the product catalogue, the canvas (where the twin sits, what is
behind it), the on-screen elements; and ``/overlay``, the same elements as a transparent page for OBS.

Pictures are decoded and drawn off the event loop (an executor); every change to what is on screen takes effect
from the next frame composed (``production.next_frame``).
"""

from __future__ import annotations

import asyncio
import functools
from importlib import resources
from typing import Any

from aiohttp import web

from stream.canvas import COLOUR, Background, Placement
from stream.http_common import RUNTIME, read_body, read_json, read_optional_json
from stream.openapi import SESSION, SESSION_QUERY, Route, obj
from stream.overlays import KINDS, CountdownBadge, Element, Ticker, card_element, lower_third_element
from stream.production import Production, card_content, next_frame
from stream.products import NEW_PRODUCT, PRODUCT_CHANGE, Catalogue, prepare_picture
from stream.show import ShowLibrary
from twincast.errors import InputError, NotFoundError

CATALOGUE: web.AppKey[Catalogue] = web.AppKey("catalogue", Catalogue)
SHOWS: web.AppKey[ShowLibrary] = web.AppKey("shows", ShowLibrary)
KIND_PATTERN = "|".join(KINDS)
PICTURE_BODY = {"content": "application/octet-stream"}  # PNG, JPEG, WebP or GIF bytes, whatever the header says
ELEMENT_BODY = obj(
    product={"type": "string", "maxLength": 40, "description": "card, badge: a catalogue product id"},
    title={"type": "string", "minLength": 1, "maxLength": 60, "description": "lower_third: the host's name"},
    subtitle={"type": "string", "maxLength": 80, "description": "lower_third: a line under the name"},
    text={"type": "string", "minLength": 1, "maxLength": 200, "description": "badge: large text; ticker: its text"},
    detail={"type": "string", "maxLength": 40, "description": "badge: a line under the text"},
    ends_in_s={"type": "number", "minimum": 1, "maximum": 86_400, "description": "badge: a countdown"},
    session=SESSION)


def setup(app: web.Application) -> None:
    """Give ``app`` the catalogue and the show library, kept under the runtime's ``serve.commerce_dir``."""
    root = app[RUNTIME].config.commerce_dir
    app[CATALOGUE] = Catalogue(root)
    app[SHOWS] = ShowLibrary(root)


def production(request: web.Request, session_id: str | None) -> Production:
    """A session's production (the default session's when ``session_id`` is None)."""
    return request.app[RUNTIME].channel(session_id).production


async def off_loop(function: Any, *args: Any) -> Any:
    """Run blocking work (decoding, drawing) on the default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


# --- products -------------------------------------------------------------------------------------------------

async def list_products(request: web.Request) -> web.Response:
    """Every product of the catalogue."""
    return web.json_response({"products": [p.to_dict() for p in request.app[CATALOGUE].list()]})


async def create_product(request: web.Request) -> web.Response:
    """Add a product."""
    product = request.app[CATALOGUE].create(await read_json(request))
    return web.json_response(product.to_dict(), status=201,
                             headers={"Location": f"/api/products/{product.product_id}"})


async def get_product(request: web.Request) -> web.Response:
    """One product."""
    return web.json_response(request.app[CATALOGUE].get(request.match_info["product_id"]).to_dict())


async def update_product(request: web.Request) -> web.Response:
    """Change some of a product's fields."""
    product = request.app[CATALOGUE].update(request.match_info["product_id"], await read_json(request))
    return web.json_response(product.to_dict())


async def delete_product(request: web.Request) -> web.Response:
    """Remove a product and its picture."""
    request.app[CATALOGUE].delete(request.match_info["product_id"])
    return web.Response(status=204)


async def put_picture(request: web.Request) -> web.Response:
    """Upload a product's picture (PNG, JPEG, WebP or GIF; checked, scaled, stored as PNG)."""
    catalogue = request.app[CATALOGUE]
    product_id = request.match_info["product_id"]
    catalogue.get(product_id)
    payload = await read_body(request, request.app[RUNTIME].config.max_body_bytes, "max_body_bytes", "picture")
    png = await off_loop(prepare_picture, payload, f"picture of product {product_id!r}")
    return web.json_response(catalogue.set_picture(product_id, png).to_dict())


async def get_picture(request: web.Request) -> web.Response:
    """A product's stored picture, as PNG."""
    payload = request.app[CATALOGUE].picture_bytes(request.match_info["product_id"])
    return web.Response(body=payload, content_type="image/png", headers={"Cache-Control": "no-cache"})


# --- the canvas -------------------------------------------------------------------------------------------------

def _canvas(request: web.Request, session_id: str | None) -> dict[str, Any]:
    session = request.app[RUNTIME].session(session_id)
    layout = session.compositor.layout
    return {"session": session.session_id, "frame_size": list(session.frame_size),
            "canvas": layout is not None,
            "placement": layout.placement.to_dict() if layout else None,
            "twin_box": list(layout.box) if layout else None,
            "background": layout.background.description if layout else None}


async def get_canvas(request: web.Request) -> web.Response:
    """The canvas: its size, where the twin sits on it, what is behind it."""
    return web.json_response(_canvas(request, request.query.get("session")))


async def put_canvas(request: web.Request) -> web.Response:
    """Move or scale the twin on the canvas (``x``, ``y``: its centre as fractions of the canvas; ``scale``: its
    width as a fraction of the canvas's), or put a colour behind it."""
    body = await read_json(request)
    session = request.app[RUNTIME].session(body.get("session"))
    compositor = session.compositor
    current = compositor.require_canvas().placement
    compositor.place(Placement(float(body.get("x", current.x)), float(body.get("y", current.y)),
                               float(body.get("scale", current.scale))))
    if "background" in body:
        assert compositor.canvas is not None
        compositor.set_background(await off_loop(Background.colour, body["background"], compositor.canvas))
    return web.json_response(_canvas(request, session.session_id))


async def put_canvas_background(request: web.Request) -> web.Response:
    """Put a picture behind the twin (PNG, JPEG, WebP or GIF; scaled to cover the canvas)."""
    session = request.app[RUNTIME].session(request.query.get("session"))
    compositor = session.compositor
    compositor.require_canvas()
    payload = await read_body(request, request.app[RUNTIME].config.max_body_bytes, "max_body_bytes", "picture")
    assert compositor.canvas is not None
    compositor.set_background(await off_loop(Background.picture, payload, compositor.canvas))
    return web.json_response(_canvas(request, session.session_id))


# --- on-screen elements -------------------------------------------------------------------------------------------

async def get_overlays(request: web.Request) -> web.Response:
    """What is on screen now, element by element."""
    session = request.app[RUNTIME].session(request.query.get("session"))
    return web.json_response(session.compositor.overlays.describe(next_frame(session)))


async def put_overlays(request: web.Request) -> web.Response:
    """``{"burn_in": false}`` leaves the video clean (for producers who composite ``/overlay`` in OBS)."""
    body = await read_json(request)
    session = request.app[RUNTIME].session(body.get("session"))
    if "burn_in" in body:
        session.compositor.overlays.set_burn_in(bool(body["burn_in"]))
    return web.json_response(session.compositor.overlays.describe(next_frame(session)))


async def show_element(request: web.Request) -> web.Response:
    """Show (fade in) an element: ``card`` of a product, ``lower_third`` with a name, ``badge`` with a text or a
    product's price and maybe a countdown, ``ticker`` with a text. One already shown is replaced (cross-fade)."""
    kind = request.match_info["kind"]
    body = await read_optional_json(request)
    session = request.app[RUNTIME].session(body.get("session"))
    overlays = session.compositor.overlays
    catalogue = request.app[CATALOGUE]
    product = catalogue.get(body["product"]) if body.get("product") else None
    at = next_frame(session)
    fps = session.clock.fps

    def draw() -> Element:
        layout = overlays.layout
        if kind == "card":
            if product is None:
                raise InputError('a card needs "product": a catalogue product id')
            return card_element(layout, card_content(product, catalogue), {"product": product.product_id})
        if kind == "lower_third":
            if not body.get("title"):
                raise InputError('a lower third needs "title": the host\'s name')
            return lower_third_element(layout, body["title"], body.get("subtitle", ""))
        if kind == "badge":
            text = body.get("text") or (product.price if product else "")
            if not text:
                raise InputError('a badge needs "text" or "product" (its price is shown)')
            ends = at + round(body["ends_in_s"] * fps) if body.get("ends_in_s") else None
            return CountdownBadge(layout, text, body.get("detail", ""), ends, fps)
        if not body.get("text"):
            raise InputError('a ticker needs "text"')
        return Ticker(layout, body["text"], at, fps)

    overlays.show(await off_loop(draw), at)
    return web.json_response(overlays.describe(at))


async def hide_element(request: web.Request) -> web.Response:
    """Hide (fade out) an element."""
    session = request.app[RUNTIME].session(request.query.get("session"))
    at = next_frame(session)
    overlays = session.compositor.overlays
    if not overlays.hide(request.match_info["kind"], at):
        raise NotFoundError(f"no {request.match_info['kind']} is shown")
    return web.json_response(overlays.describe(at))


# --- /overlay: the elements as a transparent page -------------------------------------------------------------------

@functools.cache
def _overlay_page() -> str:
    return resources.files("stream").joinpath("static/overlay.html").read_text()


async def overlay_page(request: web.Request) -> web.Response:
    """The on-screen elements alone on a transparent page of the video's size (an OBS Browser Source)."""
    return web.Response(text=_overlay_page(), content_type="text/html")


async def overlay_state(request: web.Request) -> web.Response:
    """What ``/overlay`` shows now (it asks a few times a second)."""
    session = request.app[RUNTIME].session(request.query.get("session"))
    described = session.compositor.overlays.describe(next_frame(session))
    return web.json_response({**described, "fps": session.clock.fps}, headers={"Cache-Control": "no-store"})


async def overlay_element(request: web.Request) -> web.Response:
    """A shown element's picture, PNG with transparency (the ticker: one period of its strip)."""
    session = request.app[RUNTIME].session(request.query.get("session"))
    kind = request.match_info["kind"]
    payload = await off_loop(session.compositor.overlays.png, kind, next_frame(session))
    if payload is None:
        raise NotFoundError(f"no {kind} is shown")
    return web.Response(body=payload, content_type="image/png", headers={"Cache-Control": "no-store"})


COMMERCE_ROUTES: list[Route] = [
    Route("GET", "/api/products", list_products, "The product catalogue"),
    Route("POST", "/api/products", create_product, "Add a product (name, price, was_price, bullets, code or link, "
          "FAQ)", body=NEW_PRODUCT, responses={"201": "added"}),
    Route("GET", "/api/products/{product_id}", get_product, "A product"),
    Route("PUT", "/api/products/{product_id}", update_product, "Change a product's fields", body=PRODUCT_CHANGE),
    Route("DELETE", "/api/products/{product_id}", delete_product, "Delete a product", responses={"204": "deleted"}),
    Route("PUT", "/api/products/{product_id}/picture", put_picture, "A product's picture (PNG, JPEG, WebP, GIF; "
          "at most 8 MiB and 4096² pixels)", body=PICTURE_BODY, errors=(422,)),
    Route("GET", "/api/products/{product_id}/picture", get_picture, "A product's picture, as PNG"),
    Route("GET", "/api/canvas", get_canvas, "The canvas: size, the twin's place, the background",
          query=(SESSION_QUERY,)),
    Route("PUT", "/api/canvas", put_canvas, "Move or scale the twin on the canvas, or give it a colour behind it",
          body=obj(x={"type": "number", "minimum": -0.5, "maximum": 1.5},
                   y={"type": "number", "minimum": -0.5, "maximum": 1.5},
                   scale={"type": "number", "minimum": 0.1, "maximum": 4.0},
                   background={"type": "string", "pattern": COLOUR.pattern}, session=SESSION)),
    Route("PUT", "/api/canvas/background", put_canvas_background, "A picture behind the twin (PNG, JPEG, WebP, "
          "GIF; scaled to cover the canvas)", body=PICTURE_BODY, query=(SESSION_QUERY,), errors=(422,)),
    Route("GET", "/api/overlays", get_overlays, "The on-screen elements", query=(SESSION_QUERY,)),
    Route("PUT", "/api/overlays", put_overlays, "Draw the elements into the video or not (burn_in)",
          body=obj(burn_in={"type": "boolean"}, session=SESSION)),
    Route("POST", f"/api/overlays/{{kind:{KIND_PATTERN}}}", show_element, "Show an element (fades in)",
          body=ELEMENT_BODY, body_required=False),
    Route("DELETE", f"/api/overlays/{{kind:{KIND_PATTERN}}}", hide_element, "Hide an element (fades out)",
          query=(SESSION_QUERY,)),
    Route("GET", "/overlay", overlay_page, "The on-screen elements as a transparent page (OBS Browser Source)"),
    Route("GET", "/overlay/state", overlay_state, "What /overlay shows now", query=(SESSION_QUERY,)),
    Route("GET", f"/overlay/element/{{kind:{KIND_PATTERN}}}", overlay_element, "A shown element's picture (PNG)",
          query=(SESSION_QUERY,)),
]
