"""Operator endpoints of live commerce, part two: the show library (save, load, export, import), running a show,
viewer questions (``POST /api/chat``, the ``/api/chat/ingest`` WebSocket for platform bridges) and their answers,
and ``/api/show/feed``, the dashboard's live view of all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from aiohttp import WSMsgType, web

from stream.chat import CHAT_MESSAGE, MAX_CHAT_CHARS, ChatMessage
from stream.commerce_routes import CATALOGUE, SHOWS, production
from stream.http_common import int_param, parse_json, read_json, read_optional_json
from stream.openapi import INTEGER, SESSION, SESSION_QUERY, Route, check_json, obj
from stream.operator_routes import _open_socket
from stream.production import next_frame
from stream.show import SHOW_SCHEMA, parse_show
from twincast.errors import InputError, TwincastError

WEBSOCKET = {"101": "switching to the WebSocket protocol"}
MAX_INGEST_MESSAGE_BYTES = 64 * 1024
MAX_INGEST_PER_S = 200  # chat messages one bridge socket may send a second; more are refused, each answered
FEED_EVERY_S = 1.0  # the show's clock is sent this often even when nothing changed
BRIDGE_MESSAGE = {**CHAT_MESSAGE, "properties": {key: rule for key, rule in CHAT_MESSAGE["properties"].items()
                                                if key != "session"}}  # the socket names its session once
ACTIONS = ("start", "hold", "resume", "skip", "back", "next", "previous", "stop")


# --- the show library -----------------------------------------------------------------------------------------

async def list_shows(request: web.Request) -> web.Response:
    """The saved shows."""
    return web.json_response({"shows": request.app[SHOWS].list()})


async def save_show(request: web.Request) -> web.Response:
    """Save a show (also how an exported show is imported): a new id when it has none or a taken one's is not
    to be replaced — a POST with an existing id replaces it."""
    show = request.app[SHOWS].save(parse_show(await read_json(request)))
    return web.json_response(show.to_dict(), status=201, headers={"Location": f"/api/shows/{show.show_id}"})


async def get_show(request: web.Request) -> web.Response:
    """A saved show as JSON (its export)."""
    show = request.app[SHOWS].get(request.match_info["show_id"])
    return web.json_response(show.to_dict(), headers={
        "Content-Disposition": f'attachment; filename="{show.show_id}.json"'})


async def replace_show(request: web.Request) -> web.Response:
    """Save a show under the id in the path."""
    body = await read_json(request)
    show = request.app[SHOWS].save(parse_show({**body, "id": request.match_info["show_id"]}))
    return web.json_response(show.to_dict())


async def delete_show(request: web.Request) -> web.Response:
    """Delete a saved show."""
    request.app[SHOWS].delete(request.match_info["show_id"])
    return web.Response(status=204)


# --- running a show -------------------------------------------------------------------------------------------

async def run_state(request: web.Request) -> web.Response:
    """The session's run of show: state, position, estimates, the clock against the plan."""
    return web.json_response(production(request, request.query.get("session")).describe())


async def load_show(request: web.Request) -> web.Response:
    """Load a saved show (``show_id``) or one given whole (``show``) into the session, ready to start."""
    body = await read_json(request)
    if ("show_id" in body) == ("show" in body):
        raise InputError('give either "show_id" (a saved show) or "show" (a whole show)')
    show = request.app[SHOWS].get(body["show_id"]) if "show_id" in body else parse_show(body["show"])
    target = production(request, body.get("session"))
    await target.load(show, request.app[CATALOGUE])
    return web.json_response(target.describe())


async def control(request: web.Request) -> web.Response:
    """start (``segment``), hold, resume, skip (the line), back (a line), next and previous (segment), stop."""
    body = await read_optional_json(request)
    target = production(request, body.get("session"))
    action = request.match_info["action"]
    if action == "start":
        target.start(int(body.get("segment", 0)))
    elif action == "stop":
        await target.stop()
    else:
        {"hold": target.hold, "resume": target.resume, "skip": target.skip, "back": target.back,
         "next": target.next_segment, "previous": target.previous_segment}[action]()
    return web.json_response(target.describe())


async def set_auto_answer(request: web.Request) -> web.Response:
    """Turn the show's auto-answer switch on or off: while on, matching questions are answered without a click."""
    body = await read_json(request)
    target = production(request, body.get("session"))
    target.set_auto_answer(bool(body["enabled"]))
    return web.json_response(target.describe())


# --- viewer questions -----------------------------------------------------------------------------------------

async def post_chat(request: web.Request) -> web.Response:
    """A viewer's comment from a platform bridge (stored and screened; nothing is spoken)."""
    body = await read_json(request)
    message = production(request, body.get("session")).chat.ingest(body)
    return web.json_response(message.to_dict(), status=201)


async def list_chat(request: web.Request) -> web.Response:
    """Messages newest first: ``q`` a word in the user or text, ``state`` new/answered/dismissed, ``after`` an id."""
    chat = production(request, request.query.get("session")).chat
    after = request.query.get("after", "0")
    if not after.isdigit():
        raise InputError(f"after must be a message id (a whole number), got {after[:20]!r}")
    state = request.query.get("state", "")
    if state not in ("", "new", "answered", "dismissed"):
        raise InputError(f"state must be new, answered or dismissed, got {state[:20]!r}")
    messages = chat.listing(text=request.query.get("q", "")[:100], state=state, after=int(after))
    return web.json_response({"messages": [m.to_dict() for m in messages], "received": chat.received})


async def ingest_socket(request: web.Request) -> web.WebSocketResponse:
    """WebSocket for a platform bridge: each text message is one comment (``{"user", "text", "time"?,
    "platform"?}``) or ``{"messages": [...]}``; each is answered ``{"type": "ok", "ids": [...]}`` or
    ``{"type": "error", "error": …}``; at most ``MAX_INGEST_PER_S`` comments a second."""
    target = production(request, request.query.get("session"))
    socket = await _open_socket(request, MAX_INGEST_MESSAGE_BYTES)
    window: deque[float] = deque()
    async for message in socket:
        if message.type != WSMsgType.TEXT:
            if message.type == WSMsgType.BINARY:
                await socket.send_json({"type": "error", "error": "send comments as JSON text messages"})
                continue
            break
        try:
            body = parse_json(message.data.encode())
            batch = body.get("messages") if isinstance(body, dict) and "messages" in body else [body]
            if not isinstance(batch, list) or not batch:
                raise InputError('expected {"user", "text"} or {"messages": [{"user", "text"}, …]}')
            now = time.monotonic()
            while window and window[0] < now - 1.0:
                window.popleft()
            if len(window) + len(batch) > MAX_INGEST_PER_S:
                raise InputError(f"more than {MAX_INGEST_PER_S} comments a second on this socket; these "
                                 f"{len(batch)} were refused")
            ids = []
            for index, item in enumerate(batch):
                check_json(BRIDGE_MESSAGE, item, f"messages[{index}]")
            for item in batch:
                ids.append(target.chat.ingest(item).message_id)
                window.append(now)
            await socket.send_json({"type": "ok", "ids": ids})
        except TwincastError as exc:
            await socket.send_json({"type": "error", "error": str(exc)})
    return socket


async def suggestions(request: web.Request) -> web.Response:
    """FAQ entries that may answer a message, best first."""
    target = production(request, request.query.get("session"))
    return web.json_response({"suggestions": target.suggestions(int_param(request, "message_id"))})


async def answer(request: web.Request) -> web.Response:
    """The producer answers a message aloud: ``source`` text (``text``), faq (``product``, ``faq_index``) or
    agent; ``when`` next or now; ``read_question`` reads the viewer's question first (screened)."""
    body = await read_json(request)
    target = production(request, body.get("session"))
    result = await target.answer(int_param(request, "message_id"), source=body.get("source", "text"),
                                 text=body.get("text"), product_id=body.get("product"),
                                 faq_index=body.get("faq_index"), when=body.get("when", "next"),
                                 read_question=bool(body.get("read_question", False)))
    return web.json_response(result, status=202)


async def dismiss(request: web.Request) -> web.Response:
    """Mark a message as dealt with, without an answer."""
    body = await read_optional_json(request)
    target = production(request, body.get("session"))
    message = target.chat.get(int_param(request, "message_id"))
    target.chat.mark(message, "dismissed")
    return web.json_response(message.to_dict())


async def feed_socket(request: web.Request) -> web.WebSocketResponse:
    """The dashboard's live view of a session's production: ``hello`` (show, overlays, the last 100 messages),
    then ``show`` and ``overlays`` whenever they change (the show at least every second, for its clock) and
    ``chat`` for each message that arrives or changes. The socket only sends."""
    target = production(request, request.query.get("session"))
    session = target.session
    socket = await _open_socket(request, 4096)
    wake = asyncio.Event()
    pending_chat: deque[int] = deque(maxlen=200)  # overflow rule: the oldest ids go; the dashboard resyncs
    dirty = {"show": False, "overlays": False}

    def mark(kind: str) -> None:
        dirty[kind] = True
        wake.set()

    def arrived(message: ChatMessage) -> None:
        pending_chat.append(message.message_id)
        wake.set()

    stops = [target.on_change(lambda: mark("show")), target.overlays.on_change(lambda: mark("overlays")),
             target.chat.on_change(arrived)]
    receiving = asyncio.ensure_future(socket.receive())
    try:
        await socket.send_json({"type": "hello", "show": target.describe(),
                                "overlays": target.overlays.describe(next_frame(session)),
                                "chat": [m.to_dict() for m in target.chat.listing(limit=100)]})
        while not socket.closed:
            waiting = asyncio.ensure_future(wake.wait())
            done, _ = await asyncio.wait({waiting, receiving}, timeout=FEED_EVERY_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            wake.clear()
            if receiving in done:
                if receiving.result().type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                await socket.send_json({"type": "error", "error": "the feed socket only sends"})
                receiving = asyncio.ensure_future(socket.receive())
            while pending_chat:
                message_id = pending_chat.popleft()
                try:
                    await socket.send_json({"type": "chat", "message": target.chat.get(message_id).to_dict()})
                except TwincastError:
                    continue  # forgotten already
            if dirty["overlays"]:
                dirty["overlays"] = False
                await socket.send_json({"type": "overlays", "overlays": target.overlays.describe(next_frame(session))})
            dirty["show"] = False
            await socket.send_json({"type": "show", "show": target.describe()})
    except ConnectionResetError:
        pass
    finally:
        receiving.cancel()
        for stop in stops:
            stop()
    await socket.close()
    return socket


ANSWER_BODY = obj(source={"enum": ["text", "faq", "agent"]}, text={"type": "string", "minLength": 1, "maxLength": 2000},
                  product={"type": "string", "maxLength": 40}, faq_index={"type": "integer", "minimum": 0},
                  when={"enum": ["next", "now"]}, read_question={"type": "boolean"}, session=SESSION)
SHOW_ROUTES: list[Route] = [
    Route("GET", "/api/shows", list_shows, "Saved shows"),
    Route("POST", "/api/shows", save_show, "Save a show (or import an exported one)", body=SHOW_SCHEMA,
          responses={"201": "saved"}),
    Route("GET", "/api/shows/{show_id}", get_show, "A saved show as JSON (export)"),
    Route("PUT", "/api/shows/{show_id}", replace_show, "Save a show under this id", body=SHOW_SCHEMA),
    Route("DELETE", "/api/shows/{show_id}", delete_show, "Delete a saved show", responses={"204": "deleted"}),
    Route("GET", "/api/show", run_state, "The session's run of show: state, position, estimates, clock",
          query=(SESSION_QUERY,)),
    Route("POST", "/api/show/load", load_show, "Load a saved show (show_id) or a whole one (show) into a session",
          body=obj(show_id={"type": "string", "maxLength": 40}, show=SHOW_SCHEMA, session=SESSION), errors=(422,)),
    Route("POST", f"/api/show/{{action:{'|'.join(ACTIONS)}}}", control, "Run the show: start (at a segment), hold, "
          "resume, skip or back a line, next or previous segment, stop",
          body=obj(segment={**INTEGER, "minimum": 0}, session=SESSION), body_required=False, errors=(502, 503)),
    Route("PUT", "/api/show/auto_answer", set_auto_answer, "The show's auto-answer switch",
          body=obj(("enabled",), enabled={"type": "boolean"}, session=SESSION)),
    Route("GET", "/api/show/feed", feed_socket, "WebSocket: the session's show, elements and chat, live",
          query=(SESSION_QUERY,), responses=WEBSOCKET),
    Route("POST", "/api/chat", post_chat, "A viewer's comment from a platform bridge (nothing is spoken)",
          body=CHAT_MESSAGE, responses={"201": "stored"}),
    Route("GET", "/api/chat", list_chat, "Viewer messages, newest first, filtered",
          query=(SESSION_QUERY, *({"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                                  for name in ("q", "state", "after")))),
    Route("GET", "/api/chat/ingest", ingest_socket, f"WebSocket: comments from a platform bridge (up to "
          f"{MAX_INGEST_PER_S} a second, {MAX_CHAT_CHARS} characters each)", query=(SESSION_QUERY,),
          responses=WEBSOCKET),
    Route("GET", "/api/chat/{message_id:\\d+}/suggestions", suggestions, "FAQ answers that may fit a message",
          query=(SESSION_QUERY,)),
    Route("POST", "/api/chat/{message_id:\\d+}/answer", answer, "Answer a message aloud (the producer's click)",
          body=ANSWER_BODY, responses={"202": "queued"}, errors=(422, 502, 503)),
    Route("POST", "/api/chat/{message_id:\\d+}/dismiss", dismiss, "Mark a message dealt with",
          body=obj(session=SESSION), body_required=False),
]

