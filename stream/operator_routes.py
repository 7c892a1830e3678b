"""Operator endpoints (all under ``/api/``, and the WHIP ingest at ``/whip``, behind the operator token): speech,
barge-in, inputs, pose, sessions, outputs, the script, stats and the live event feed."""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSMsgType, web

from avatar.speech import check_text
from stream.audio_files import decode_audio_file
from stream.http_common import (
    RUNTIME,
    int_param,
    optional_str,
    read_body,
    read_json,
    read_optional_json,
    read_sdp,
)
from stream.push import PushProtocol, protocol_version
from stream.push import serve as serve_push
from stream.stats import stats_json
from twincast.errors import InputError

STATS_EVERY_S = 0.5
MAX_PUSH_MESSAGE_BYTES = 1 << 20  # one PCM packet: 10 s at 48 kHz
MAX_EVENTS_MESSAGE_BYTES = 4096  # the events socket only sends; a client's message is answered, a big one ends it


async def auth_check(request: web.Request) -> web.Response:
    """200 when the bearer token is right (the middleware answers 401 otherwise)."""
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    """Everything the health panel shows, as JSON."""
    return web.json_response(stats_json(request.app[RUNTIME].stats()))


async def event_log(request: web.Request) -> web.Response:
    """The most recent events, oldest first."""
    return web.json_response({"events": [e.to_dict() for e in request.app[RUNTIME].events.recent(200)]})


async def _open_socket(request: web.Request, max_msg_size: int) -> web.WebSocketResponse:
    """Upgrade the request to a WebSocket, or say (400) that this endpoint is one."""
    socket = web.WebSocketResponse(max_msg_size=max_msg_size, heartbeat=20)
    if not socket.can_prepare(request).ok:
        raise InputError(f"{request.method} {request.path} is a WebSocket endpoint; connect with "
                         "Connection: Upgrade and Upgrade: websocket")
    await socket.prepare(request)
    return socket


async def events_socket(request: web.Request) -> web.WebSocketResponse:
    """Live feed for the dashboard: recent events first, then stats every 0.5 s and each new event.

    The socket only sends: a message from the client is answered with an error (and otherwise ignored); one
    over ``MAX_EVENTS_MESSAGE_BYTES``, or a close, ends it.
    """
    runtime = request.app[RUNTIME]
    log = runtime.events
    socket = await _open_socket(request, MAX_EVENTS_MESSAGE_BYTES)
    queue = log.subscribe()
    receiving = asyncio.ensure_future(socket.receive())  # awaited below, or cancelled in finally
    try:
        await socket.send_json({"type": "hello", "events": [e.to_dict() for e in log.recent(100)],
                                "stats": stats_json(runtime.stats())})
        next_stats = time.monotonic() + STATS_EVERY_S
        while not socket.closed:
            getting = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getting, receiving}, timeout=max(0.0, next_stats - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if getting in done:  # events as they come, stats on their own cadence
                await socket.send_json({"type": "event", **getting.result().to_dict()})
            else:
                getting.cancel()
            if receiving in done:
                message = receiving.result()
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break  # closed, closing or an error (a message over the size limit)
                await socket.send_json({"type": "error", "error": "the events socket only sends; the "
                                        f"{message.type.name.lower()} message was ignored"})
                receiving = asyncio.ensure_future(socket.receive())
            if time.monotonic() >= next_stats:
                await socket.send_json({"type": "stats", "stats": stats_json(runtime.stats())})
                next_stats = time.monotonic() + STATS_EVERY_S
    except ConnectionResetError:
        pass
    finally:
        receiving.cancel()
        log.unsubscribe(queue)
    await socket.close()
    return socket


async def say(request: web.Request) -> web.Response:
    """Speak text after whatever is queued."""
    body = await read_json(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise InputError('body must be {"text": "…"} with a string text')
    text = check_text(text)  # control characters out, so they reach neither espeak-ng nor the event log
    session = request.app[RUNTIME].session(optional_str(body, "session"))
    result = await session.say(text)
    request.app[RUNTIME].events.emit("speech", f"queued {result['queued_s']:.1f} s: {text[:60]}",
                                     session=session.session_id)
    return web.json_response(result, status=202)


async def interrupt(request: web.Request) -> web.Response:
    """Barge-in: stop speech now."""
    body = await read_optional_json(request)
    session = request.app[RUNTIME].session(optional_str(body, "session"))
    result = session.interrupt()
    request.app[RUNTIME].events.emit("interrupt", f"interrupted; dropped {result['dropped_s']:.1f} s of speech",
                             session=session.session_id)
    return web.json_response(result)


async def play(request: web.Request) -> web.Response:
    """Play an uploaded audio file after whatever is queued."""
    config = request.app[RUNTIME].config
    session = request.app[RUNTIME].session(request.query.get("session"))
    payload = await read_body(request, config.max_body_bytes, "max_body_bytes", "audio file")
    if not payload:
        raise InputError("the request body is empty; expected the bytes of an audio file")
    speech = await asyncio.get_running_loop().run_in_executor(None, decode_audio_file, payload,
                                                              config.max_queued_speech_s)
    frames = await session.queue_speech(speech)
    request.app[RUNTIME].events.emit("speech", f"queued a {frames / session.clock.fps:.1f} s audio file",
                             session=session.session_id)
    return web.json_response({"queued_s": round(frames / session.clock.fps, 3),
                              "queue_s": round(len(session.audio_queue) / session.clock.fps, 3)}, status=202)


async def push(request: web.Request) -> web.WebSocketResponse:
    """An agent's PCM push (see ``stream.push`` for the protocol)."""
    session = request.app[RUNTIME].session(request.query.get("session"))
    protocol = PushProtocol(session, protocol_version(request.query.get("version")))
    socket = await _open_socket(request, MAX_PUSH_MESSAGE_BYTES)
    request.app[RUNTIME].events.emit("input", "agent push connected", session=session.session_id)
    await serve_push(socket, protocol)
    request.app[RUNTIME].events.emit("input", "agent push disconnected", session=session.session_id)
    return socket


async def upstream_offer(request: web.Request) -> web.Response:
    """The operator's microphone or webcam as a WebRTC upstream (an SDP offer with a sendonly track)."""
    kind = request.match_info["kind"]
    offer = await read_sdp(request)
    runtime = request.app[RUNTIME]
    upstream_id, answer = await runtime.add_upstream(kind, offer, request.query.get("session"))
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={"Location": f"/api/{kind}/{upstream_id}"})


async def upstream_delete(request: web.Request) -> web.Response:
    """Disconnect a microphone or webcam."""
    await request.app[RUNTIME].remove_upstream(request.match_info["upstream_id"])
    return web.Response(status=204)


async def whip_offer(request: web.Request) -> web.Response:
    """WHIP ingest (RFC 9725, as OBS Studio 30+ sends it): an SDP offer with a sendonly audio and/or video track
    in, ``201`` with the answer and the WHIP session's ``Location`` out. The audio becomes the twin's live speech
    and the video's head pose drives its head, exactly as the microphone and the webcam upstreams do."""
    offer = await read_sdp(request)
    upstream_id, answer = await request.app[RUNTIME].add_upstream("whip", offer, request.query.get("session"))
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={"Location": f"/whip/{upstream_id}"})


async def whip_delete(request: web.Request) -> web.Response:
    """WHIP: end an ingest session (``200``, as RFC 9725 has it)."""
    await request.app[RUNTIME].remove_upstream(request.match_info["upstream_id"])
    return web.Response(status=200)


async def pose(request: web.Request) -> web.Response:
    """Choose the pose driver: the footage loop, a still frame, or a scripted pose."""
    body = await read_json(request)
    session = request.app[RUNTIME].session(optional_str(body, "session"))
    mode = body.get("mode", "script")
    if mode == "script":
        try:
            angles = [float(body.get(axis, 0.0)) for axis in ("yaw", "pitch", "roll")]
        except (TypeError, ValueError) as exc:
            raise InputError("yaw, pitch and roll must be numbers (degrees)") from exc
        session.pose.script(*angles)
    elif mode == "still":
        index = body.get("base_index")
        if index is not None and not isinstance(index, int):
            raise InputError('"base_index" must be an integer')
        session.pose.set_mode("still", still_index=index)
    else:
        session.pose.set_mode(str(mode))
    return web.json_response(session.pose.describe())


async def list_sessions(request: web.Request) -> web.Response:
    """Sessions and the twins they show."""
    runtime = request.app[RUNTIME]
    return web.json_response({"sessions": [{"id": key, "twin": channel.session.twin.name}
                                           for key, channel in runtime.channels.items()],
                              "twins": sorted(runtime.twins)})


async def create_session(request: web.Request) -> web.Response:
    """Start another session of a loaded twin."""
    body = await read_json(request)
    runtime = request.app[RUNTIME]
    session_id, twin = optional_str(body, "id"), optional_str(body, "twin")
    if not session_id:
        raise InputError('body must name the new session: {"id": "…", "twin": "…"}')
    session = runtime.add_session(session_id, twin or runtime.session().twin.name)
    return web.json_response({"id": session.session_id, "twin": session.twin.name}, status=201)


async def delete_session(request: web.Request) -> web.Response:
    """Stop a session and everything attached to it."""
    await request.app[RUNTIME].remove_session(request.match_info["session_id"])
    return web.Response(status=204)


async def list_outputs(request: web.Request) -> web.Response:
    """RTMP pushes, recordings, WHIP and Janus publishes, with their state (stream keys, tokens and room secrets
    masked), and where recordings go."""
    runtime = request.app[RUNTIME]
    return web.json_response({"outputs": [o.describe() for o in runtime.outputs()],
                              "recordings_dir": str(runtime.config.recordings_dir.resolve())})


OUTPUT_TARGET = {"rtmp": "url", "record": "path", "whip": "url", "janus": "url"}  # the field naming each target


async def create_output(request: web.Request) -> web.Response:
    """Start an RTMP push (``url``, optionally ``key``), an MP4 recording (``path``), a WHIP publish (``url``,
    optionally ``token``) or a Janus VideoRoom publish (``url``: ``janus://HOST:PORT/ROOM``)."""
    body = await read_json(request)
    kind = optional_str(body, "kind") or "rtmp"
    target = optional_str(body, OUTPUT_TARGET.get(kind, "url"))
    if not target:
        raise InputError('an rtmp output needs "url"; a record output needs "path"; a whip output needs "url"; a '
                         'janus output needs "url" (janus://HOST:PORT/ROOM)')
    key, token = optional_str(body, "key"), optional_str(body, "token")
    if kind == "rtmp" and key:
        target = target.rstrip("/") + "/" + key
    if token is not None and kind != "whip":
        raise InputError(f'"token" is for whip outputs (the WHIP endpoint\'s bearer token); a {kind} output takes '
                         'none')
    output = request.app[RUNTIME].add_output(kind, target, optional_str(body, "session"), token=token)
    return web.json_response(output.describe(), status=201)


async def delete_output(request: web.Request) -> web.Response:
    """Stop an output (finishing a recording)."""
    output = await request.app[RUNTIME].remove_output(request.match_info["output_id"])
    return web.json_response(output.describe())


async def get_script(request: web.Request) -> web.Response:
    """A session's script."""
    runtime = request.app[RUNTIME]
    return web.json_response(runtime.script(request.query.get("session")).to_dict())


async def add_script_lines(request: web.Request) -> web.Response:
    """Append lines: ``{"lines": ["…", …]}`` or ``{"text": "one line per row"}``."""
    body = await read_json(request)
    lines = body.get("lines")
    if lines is None and isinstance(body.get("text"), str):
        lines = body["text"].splitlines()
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise InputError('body must be {"lines": ["…"]} or {"text": "…"}')
    script = request.app[RUNTIME].script(optional_str(body, "session"))
    added = script.add(lines)
    return web.json_response({"added": [line.to_dict() for line in added], **script.to_dict()}, status=201)


async def reorder_script(request: web.Request) -> web.Response:
    """Reorder: ``{"order": [line ids, every one exactly once]}``."""
    body = await read_json(request)
    order = body.get("order")
    if not isinstance(order, list) or not all(isinstance(item, int) for item in order):
        raise InputError('body must be {"order": [line ids]}')
    script = request.app[RUNTIME].script(optional_str(body, "session"))
    script.reorder(order)
    return web.json_response(script.to_dict())


async def delete_script_line(request: web.Request) -> web.Response:
    """Remove a line."""
    script = request.app[RUNTIME].script(request.query.get("session"))
    script.remove(int_param(request, "line_id"))
    return web.json_response(script.to_dict())


async def speak_script_line(request: web.Request) -> web.Response:
    """Cue a line: ``{"when": "next"}`` after what is being said, ``{"when": "now"}`` interrupting it."""
    body = await read_optional_json(request)
    when = body.get("when", "next")
    if when not in ("now", "next"):
        raise InputError(f'"when" must be "now" or "next", got {when!r}')
    runtime = request.app[RUNTIME]
    session = runtime.session(optional_str(body, "session"))
    script = runtime.script(session.session_id)
    line = script.line(int_param(request, "line_id"))
    if when == "now":
        session.interrupt()
    result = await session.say(line.text)
    script.mark_spoken(line.line_id)
    request.app[RUNTIME].events.emit("speech", f"line {line.line_id} ({when}): {line.text[:60]}",
                                     session=session.session_id)
    return web.json_response({**result, "line": line.to_dict()}, status=202)
