"""Publishing to a Janus VideoRoom (an SFU): a session sent once to Janus, which forwards it to any number of
subscribers, so twincast's work does not grow with the audience.

Target: ``janus://HOST[:PORT]/ROOM`` (Janus' HTTP REST API at ``http://HOST:PORT/janus``, port 8088 by default) or
``januss://`` for HTTPS (port 8089 by default); ``ROOM`` is the VideoRoom's numeric id. Query options:
``secret=…`` (the room's secret, and its pin: set on rooms this output creates, sent when joining) and
``create=0`` (publish only into a room that exists; by default a missing room is created with this session's
video codec and Opus).

One connection: create a Janus session, attach ``janus.plugin.videoroom``, create the room if it is missing,
``join`` as a publisher whose ``display`` is the session id, ``configure`` with the aiortc offer (every candidate
gathered: aiortc does not trickle), apply the answer that comes back as an event on the session's long poll, and
keep the session alive (a keepalive every ``KEEPALIVE_S``: Janus drops sessions idle for 60 s). The peer sends,
sendonly, the session's relayed video (a copy of each frame of its own) and its own audio track, as a WHIP publish
does (``stream.whip_output``); it is ``live`` once the peer connection is connected.

Reconnecting: when Janus cannot be reached or its long poll breaks (Janus gone), when it refuses a request (a
room that is missing with ``create=0``, a wrong secret, a full room), when it hangs the peer up, times the session
out or destroys the room, or when the peer fails, closes, does not connect within ``CONNECT_TIMEOUT_S`` or falls
silent (no RTCP receiver report for ``SILENT_S``), the output tears the connection down (best effort) and makes a
new one after ``outputs.Backoff`` (1 s doubling to 30 s). Stopping ``leave``s the room, detaches, destroys the Janus
session and closes the peer. The secret is only ever sent to Janus: targets are shown with it masked
(``outputs.mask_key``), and Janus' error text that quotes it is masked before it is shown or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.sdp import SessionDescription

from stream.outputs import MAX_URL_CHARS, mask_key
from stream.peer_publish import PeerPublish, PublishFailure, TrackPair
from twincast.errors import InputError

log = logging.getLogger(__name__)
VIDEOROOM = "janus.plugin.videoroom"
DEFAULT_PORTS = {"janus": 8088, "januss": 8089}
MAX_ROOM_ID = 2**53 - 1  # room ids travel as JSON numbers
MAX_SECRET_CHARS = 256
ROOM_PUBLISHERS = 16  # publishers a room this output creates takes (sessions of several servers may share one)
HTTP_TIMEOUT_S = 10.0  # Janus must answer a request within this (a request's event too)
HANG_UP_TIMEOUT_S = 3.0  # each request of a hang-up (leave, detach, destroy) waits this long at most
LONG_POLL_S = 30.0  # Janus answers a long poll within 30 s (a keepalive event when nothing happened)
KEEPALIVE_S = 25.0  # Janus drops a session idle for 60 s


class JanusFailure(PublishFailure):
    """A Janus request or connection failed or ended; the message says why (an output then reconnects)."""


@dataclass(frozen=True)
class JanusTarget:
    """A parsed ``janus://`` target: where Janus' REST API is, the room, its secret, and whether to create it."""

    api_url: str  # http(s)://host:port/janus
    room: int
    secret: str | None
    create: bool

    def describe(self) -> str:
        """The target as given, with the secret masked."""
        parts = urllib.parse.urlsplit(self.api_url)
        scheme = "januss" if parts.scheme == "https" else "janus"
        query = [f"secret={mask_key(self.secret)}"] if self.secret else []
        query += [] if self.create else ["create=0"]
        return f"{scheme}://{parts.netloc}/{self.room}" + (f"?{'&'.join(query)}" if query else "")


def parse_target(target: str) -> JanusTarget:
    """Read a ``janus://HOST[:PORT]/ROOM[?secret=…&create=0]`` target (``januss://`` for HTTPS).

    Raises:
        InputError: the target is not of that form; the message names the part that is wrong.
    """
    expected = "janus://HOST:PORT/ROOM (or januss:// for HTTPS; ROOM a number; options ?secret=…&create=0)"
    if len(target) > MAX_URL_CHARS or not re.fullmatch(r"[!-~]+", target):
        raise InputError(f"Janus target must be printable ASCII without spaces, at most {MAX_URL_CHARS} "
                         f"characters: {expected}")
    try:
        parts = urllib.parse.urlsplit(target)
    except ValueError as exc:  # e.g. an unclosed '[' of an IPv6 host
        raise InputError(f"Janus target is not a URL ({exc}): {expected}") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise InputError(f"Janus target scheme {parts.scheme or '(none)'!r} must be janus or januss: {expected}")
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise InputError(f"Janus target port must be a number in 1..65535: {expected}") from exc
    if not host or parts.username is not None or parts.fragment or not 1 <= port <= 65535:
        raise InputError(f"Janus target needs a host (and no user or #fragment): {expected}")
    room_text = parts.path.strip("/")
    if not room_text.isdigit() or not 1 <= int(room_text) <= MAX_ROOM_ID:
        raise InputError(f"Janus target room {room_text or '(none)'!r} must be a number in 1..{MAX_ROOM_ID} "
                         f"(the VideoRoom's id): {expected}")
    secret, create = _target_options(parts.query, expected)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "https" if parts.scheme == "januss" else "http"
    return JanusTarget(f"{scheme}://{netloc}/janus", int(room_text), secret, create)


def _target_options(query: str, expected: str) -> tuple[str | None, bool]:
    """The ``secret`` and ``create`` options of a target's query string.

    Raises:
        InputError: an unknown or repeated option, an empty or odd secret, or ``create`` not 0 or 1.
    """
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise InputError(f"Janus target options must be key=value pairs joined by '&': {expected}") from exc
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in ("secret", "create"):
            raise InputError(f"Janus target option {key!r} is unknown; the options are secret and create: "
                             f"{expected}")
        if key in options:
            raise InputError(f"Janus target option {key!r} is given twice")
        options[key] = value
    secret = options.get("secret")
    if secret is not None and (not 1 <= len(secret) <= MAX_SECRET_CHARS or not re.fullmatch(r"[!-~]+", secret)):
        raise InputError(f"Janus target secret must be 1-{MAX_SECRET_CHARS} printable ASCII characters")
    if options.get("create", "1") not in ("0", "1"):
        raise InputError("Janus target option create must be 0 (publish only into an existing room) or 1 (create "
                         "a missing room, the default)")
    return secret, options.get("create", "1") == "1"


def _transaction() -> str:
    return uuid.uuid4().hex[:16]


class JanusApi:
    """One Janus session over the HTTP REST API: requests, the long poll that brings its events, keepalives.

    ``failure`` says why the session is gone (Janus unreachable, the long poll broken, the session timed out),
    None while it lives. Events that answer no request (``hangup``, ``webrtcup``, a room's news) go to
    ``on_event``.
    """

    def __init__(self, http: aiohttp.ClientSession, api_url: str, *,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.api_url = api_url
        self.session_id: int | None = None
        self.failure: str | None = None
        self._http = http
        self._on_event = on_event
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    async def open(self) -> None:
        """Create the Janus session and start its long poll and keepalives.

        Raises:
            JanusFailure: Janus cannot be reached or refused the session.
        """
        reply = await self._post(self.api_url, {"janus": "create"}, "create a session")
        self.session_id = int(reply["data"]["id"])
        self._tasks = [asyncio.create_task(self._poll(), name=f"janus-poll-{self.session_id}"),
                       asyncio.create_task(self._keepalive(), name=f"janus-keepalive-{self.session_id}")]

    @property
    def session_url(self) -> str:
        """This session's URL."""
        return f"{self.api_url}/{self.session_id}"

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        """Attach a handle to ``plugin``; returns its id.

        Raises:
            JanusFailure: Janus refused or did not answer.
        """
        reply = await self._post(self.session_url, {"janus": "attach", "plugin": plugin}, f"attach {plugin}")
        return int(reply["data"]["id"])

    async def message(self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None, *,
                      timeout_s: float = HTTP_TIMEOUT_S) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Send a plugin request; returns the plugin's reply (answered at once, or as an event) and its JSEP.

        Raises:
            JanusFailure: Janus or the plugin refused (the message says what and why), or no answer in time.
        """
        what = f"the {body.get('request')} request"
        transaction = _transaction()
        waiting = asyncio.get_running_loop().create_future()
        self._pending[transaction] = waiting
        try:
            message: dict[str, Any] = {"janus": "message", "body": body}
            if jsep is not None:
                message["jsep"] = jsep
            reply = await self._post(f"{self.session_url}/{handle}", message, what, transaction=transaction,
                                     timeout_s=timeout_s)
            if reply.get("janus") == "ack":
                try:
                    reply = await asyncio.wait_for(waiting, timeout_s)
                except TimeoutError as exc:
                    raise JanusFailure(f"Janus did not answer {what} within {timeout_s:.0f} s") from exc
        finally:
            self._pending.pop(transaction, None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusFailure(f"Janus refused {what}: {error.get('reason')} (error {error.get('code')})")
        data = reply.get("plugindata", {}).get("data", {})
        if "error_code" in data or "error" in data:
            raise JanusFailure(f"the VideoRoom refused {what}: {data.get('error')} (error {data.get('error_code')})")
        return data, reply.get("jsep")

    async def detach(self, handle: int, *, timeout_s: float = HANG_UP_TIMEOUT_S) -> None:
        """Detach a handle (Janus hangs its peer up)."""
        await self._post(f"{self.session_url}/{handle}", {"janus": "detach"}, "detach", timeout_s=timeout_s)

    async def close(self, *, destroy: bool = True) -> None:
        """Stop the long poll and keepalives; ``destroy`` the Janus session too (best effort)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if destroy and self.session_id is not None and self.failure is None:
            with contextlib.suppress(JanusFailure):
                await self._post(self.session_url, {"janus": "destroy"}, "destroy the session",
                                 timeout_s=HANG_UP_TIMEOUT_S)
        self.failure = self.failure or "closed"

    async def _post(self, url: str, request: dict[str, Any], what: str, *, transaction: str | None = None,
                    timeout_s: float = HTTP_TIMEOUT_S) -> dict[str, Any]:
        """POST one request; returns Janus' reply.

        Raises:
            JanusFailure: Janus could not be reached, did not answer in time, or answered with an error.
        """
        body = {**request, "transaction": transaction or _transaction()}
        reply = await self._fetch("POST", url, what, timeout_s, json=body)
        if not isinstance(reply, dict):
            raise JanusFailure(f"Janus answered {what} with a JSON {type(reply).__name__}, not an object")
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusFailure(f"Janus refused to {what}: {error.get('reason')} (error {error.get('code')})")
        return reply

    async def _fetch(self, method: str, url: str, what: str, timeout_s: float, **kwargs: Any) -> Any:
        """One HTTP exchange with Janus; returns the decoded JSON.

        Raises:
            JanusFailure: no connection, no answer within ``timeout_s``, an HTTP error, or a body that is not JSON.
        """
        try:
            async with self._http.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                          **kwargs) as response:
                if response.status != 200:
                    raise JanusFailure(f"Janus answered {what} with HTTP {response.status} {response.reason}")
                return await response.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:
            code = exc.os_error.errno
            raise JanusFailure(f"cannot reach Janus at {exc.host}:{exc.port}: "
                               f"{os.strerror(code) if code else exc.os_error}") from exc
        except TimeoutError as exc:
            raise JanusFailure(f"Janus did not answer {what} within {timeout_s:.0f} s") from exc
        except ValueError as exc:
            raise JanusFailure(f"Janus answered {what} with something that is not JSON") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise JanusFailure(f"the connection to Janus broke ({what}): {exc or type(exc).__name__}") from exc

    async def _poll(self) -> None:
        """Long-poll the session's events until it fails (``failure`` then says why) or is closed."""
        try:
            while True:
                events = await self._fetch("GET", f"{self.session_url}?maxev=5", "the long poll", LONG_POLL_S + 10)
                for event in events if isinstance(events, list) else [events]:
                    self._dispatch(event)
        except JanusFailure as exc:
            self.failure = self.failure or str(exc)

    def _dispatch(self, event: dict[str, Any]) -> None:
        """Hand an event to the request waiting for it, or to ``on_event``; note a session gone."""
        kind = event.get("janus")
        if kind == "keepalive":
            return
        if kind == "error" and event.get("transaction") not in self._pending:
            error = event.get("error", {})
            self.failure = self.failure or f"Janus: {error.get('reason')} (error {error.get('code')})"
            return
        if kind == "timeout":
            self.failure = self.failure or "Janus timed the session out"
            return
        waiting = self._pending.get(str(event.get("transaction")))
        if waiting is not None and not waiting.done() and kind in ("event", "error", "success"):
            waiting.set_result(event)
        elif self._on_event is not None:
            self._on_event(event)

    async def _keepalive(self) -> None:
        """Tell Janus the session is in use every ``KEEPALIVE_S``; a refusal marks it failed."""
        try:
            while True:
                await asyncio.sleep(KEEPALIVE_S)
                await self._post(self.session_url, {"janus": "keepalive"}, "a keepalive")
        except JanusFailure as exc:
            self.failure = self.failure or str(exc)


def _rejected_video(answer_sdp: str) -> bool:
    """Whether an answer turns the video section down (port 0, or no video section at all)."""
    videos = [media for media in SessionDescription.parse(answer_sdp).media if media.kind == "video"]
    return not videos or all(media.port == 0 for media in videos)


class JanusOutput(PeerPublish):
    """One publish of one session into a Janus VideoRoom (see the module docstring); an ``outputs.Output``.

    Args:
        output_id, session_id: its id and its session's (the publisher's ``display`` in the room).
        target: ``janus://HOST[:PORT]/ROOM[?secret=…&create=0]``.
        video_codec: the session's video codec (``vp8`` or ``h264``): offered alone, and a room's codec.
        tracks: makes the (video, audio) tracks of one connection.
        new_peer: makes a peer connection (the channel's census counts it).
        on_state: called on the event loop after each state change.
    """

    kind = "janus"
    remote = "Janus"

    def __init__(self, output_id: str, session_id: str, target: str, *, video_codec: str, tracks: TrackPair,
                 new_peer: Callable[[], RTCPeerConnection],
                 on_state: Callable[[JanusOutput], None] | None = None) -> None:
        self.target = parse_target(target)
        super().__init__(output_id, session_id, tracks=tracks, new_peer=new_peer, on_state=on_state,
                         secret=self.target.secret)
        self.video_codec = video_codec
        self.publisher_id: int | None = None  # this publish's id in the room (subscribers name it as their feed)
        self._api: JanusApi | None = None
        self._handle: int | None = None
        self._hung_up: str | None = None  # why Janus ended the current connection (a hangup, the room destroyed)

    def target_shown(self) -> str:
        """The target with its secret masked."""
        return self.target.describe()

    async def _publish_once(self) -> NoReturn:
        """One publish: a Janus session, the room, the join, the offer and answer, then watch until it ends.

        Raises:
            PublishFailure: always, once the publish could not be made or has ended (the message says why).
        """
        assert self._http is not None
        self._hung_up = None
        api = self._api = JanusApi(self._http, self.target.api_url, on_event=self._on_event)
        await api.open()
        handle = self._handle = await api.attach(VIDEOROOM)
        await self._ensure_room(api, handle)
        joined, _ = await api.message(handle, {"request": "join", "ptype": "publisher", "room": self.target.room,
                                               "display": self.session_id, **self._pin()})
        self.publisher_id = int(joined["id"])
        peer, video, audio = self._open_peer()
        video_section = peer.addTransceiver(video, direction="sendonly")
        video_section.setCodecPreferences([codec for codec in RTCRtpSender.getCapabilities("video").codecs
                                           if codec.mimeType.lower() == f"video/{self.video_codec}"])
        peer.addTransceiver(audio, direction="sendonly")
        await peer.setLocalDescription(await peer.createOffer())
        _, jsep = await api.message(handle, {"request": "configure", "audio": True, "video": True},
                                    {"type": "offer", "sdp": peer.localDescription.sdp})
        await self._apply_answer(peer, jsep)
        await self._go_live(peer)

    def _pin(self) -> dict[str, str]:
        return {"pin": self.target.secret} if self.target.secret else {}

    async def _ensure_room(self, api: JanusApi, handle: int) -> None:
        """Make sure the room exists: create it when it is missing (unless ``create=0``).

        Raises:
            JanusFailure: the room is missing and may not be created, or Janus refused to create it.
        """
        room = self.target.room
        found, _ = await api.message(handle, {"request": "exists", "room": room})
        if found.get("exists"):
            return
        if not self.target.create:
            raise JanusFailure(f"room {room} does not exist on Janus (and create=0 says not to create it)")
        secrets = {"secret": self.target.secret, "pin": self.target.secret} if self.target.secret else {}
        try:
            await api.message(handle, {"request": "create", "room": room, "publishers": ROOM_PUBLISHERS,
                                       "videocodec": self.video_codec, "audiocodec": "opus", "fir_freq": 10,
                                       "description": f"twincast {self.session_id}", **secrets})
        except JanusFailure as exc:
            if "error 427" not in str(exc):  # 427: created meanwhile (by another publisher): fine
                raise
        log.info("output %s: created room %d on %s", self.output_id, room, self.target.describe())

    async def _apply_answer(self, peer: RTCPeerConnection, jsep: dict[str, Any] | None) -> None:
        """Apply Janus' answer to the offer.

        Raises:
            JanusFailure: no answer came, it turns the video down (the room wants another codec), or aiortc
                cannot apply it.
        """
        if not jsep or jsep.get("type") != "answer" or not isinstance(jsep.get("sdp"), str):
            raise JanusFailure("Janus answered the configure request without an SDP answer")
        sdp = str(jsep["sdp"])
        try:
            if _rejected_video(sdp):
                raise JanusFailure(f"the room {self.target.room} turned the video down: its video codec is not "
                                   f"{self.video_codec}, this session's (use another room, or serve with "
                                   "--video-codec matching the room's)")
            await peer.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except (ValueError, TypeError, KeyError, IndexError, AssertionError, AttributeError, StopIteration,
                InternalError, InvalidAccessError, InvalidStateError, OperationError) as exc:
            raise JanusFailure(f"Janus' answer could not be applied ({type(exc).__name__}: {exc})") from exc

    def _on_event(self, event: dict[str, Any]) -> None:
        """Note an event that ends this publish: Janus hung the peer up, or the room was destroyed."""
        data = event.get("plugindata", {}).get("data", {})
        if event.get("janus") == "hangup" and event.get("sender") == self._handle:
            self._hung_up = f"Janus hung up the connection ({event.get('reason', 'no reason given')})"
        elif event.get("janus") == "detached" and event.get("sender") == self._handle:
            self._hung_up = "Janus detached the publisher"
        elif data.get("videoroom") == "destroyed":
            self._hung_up = f"the room {self.target.room} was destroyed"
        elif data.get("leaving") == "ok" or data.get("kicked") == self.publisher_id:
            self._hung_up = "Janus took the publisher out of the room"

    def _ended(self, peer: RTCPeerConnection) -> str | None:
        """Why the current connection is over (the peer, the Janus session, or Janus' own word), or None."""
        failure = self._api.failure if self._api is not None else None
        return super()._ended(peer) or failure or self._hung_up

    async def _hang_up(self, *, stopping: bool) -> None:
        """End the current publish, if any: leave the room (when ``stopping``) and detach, destroy the Janus
        session (all best effort, each briefly), close the peer, stop the tracks."""
        api, handle = self._api, self._handle
        self._api = self._handle = None
        if api is not None:
            if handle is not None and api.failure is None:
                with contextlib.suppress(JanusFailure):
                    if stopping:
                        await api.message(handle, {"request": "leave"}, timeout_s=HANG_UP_TIMEOUT_S)
                    await api.detach(handle)
            await api.close()
        await self._close_peer()
