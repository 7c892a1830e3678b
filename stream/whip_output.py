"""WHIP publishing: a session sent to another server's WHIP endpoint (RFC 9725), twincast acting as the client.

The output is an aiortc peer that sends, sendonly, the session's video (a relay subscription read through
``OwnFrames``, as a viewer reads it) and its own audio track (``TwinAudioTrack``). It POSTs its offer (every
candidate gathered: aiortc does not trickle) to the endpoint URL with ``Authorization: Bearer TOKEN`` when a token
was given, applies the ``201`` answer, and keeps the WHIP session URL from ``Location``. It is ``live`` once the
peer connection is connected.

Reconnecting: when the peer connection fails or closes (the endpoint hung up: its DTLS close arrives), when the
endpoint has sent no RTCP receiver report for ``SILENT_S``, when it does not connect within ``CONNECT_TIMEOUT_S``,
or when the endpoint refuses the offer or cannot be reached, the output DELETEs the old WHIP session (best effort)
and POSTs a fresh offer after the same backoff as an RTMP push (``outputs.Backoff``: 1 s doubling to 30 s). RFC
9725's ICE restart (a PATCH with an ICE restart offer fragment) is not used: aiortc cannot restart ICE (its
``createOffer`` has no ``iceRestart``), so a reconnect is a DELETE and a new POST, with a new peer.

Stopping (the output removed, its session stopped, the server shutting down) DELETEs the WHIP session and closes
the peer. The token is only ever sent in the header: responses show it masked (``outputs.mask_key``), and an
endpoint's error text that quotes it is masked before it is shown or logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.parse
from collections.abc import Callable
from typing import NoReturn

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

from stream.outputs import MAX_URL_CHARS, mask_key
from stream.peer_publish import PeerPublish, PublishFailure, TrackPair
from stream.peers import MAX_SDP_BYTES
from stream.stats import OutputStats
from twincast.errors import InputError

log = logging.getLogger(__name__)
WHIP_URL = re.compile(r"^https?://[!-.0-~]+(/[!-~]*)?$")  # printable ASCII; no '/' in the host part
MAX_TOKEN_CHARS = 4096
HTTP_TIMEOUT_S = 10.0  # the endpoint must answer a POST or a DELETE within this


class WhipFailure(PublishFailure):
    """One WHIP connection could not be made or ended; the message says why (the output then reconnects)."""


def check_whip_url(url: str) -> str:
    """Validate a WHIP endpoint URL.

    Raises:
        InputError: not http(s)://host[:port]/path in printable ASCII, or too long.
    """
    if len(url) > MAX_URL_CHARS or not WHIP_URL.match(url):
        raise InputError("WHIP url must look like https://host[:port]/path/to/endpoint (or http://), in printable "
                         f"ASCII without spaces, at most {MAX_URL_CHARS} characters")
    return url


def check_token(token: str | None) -> str | None:
    """Validate a WHIP bearer token (None: the endpoint needs none).

    Raises:
        InputError: empty, too long, or not printable ASCII (it goes in an HTTP header).
    """
    if token is None:
        return None
    if not token or len(token) > MAX_TOKEN_CHARS or not re.fullmatch(r"[!-~]+", token):
        raise InputError(f"WHIP token must be 1-{MAX_TOKEN_CHARS} printable ASCII characters without spaces")
    return token


def mask_query(url: str) -> str:
    """A URL with its query string hidden (it may hold a key), safe for logs and responses."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "…" if parts.query else "", ""))


async def _read_at_most(response: aiohttp.ClientResponse, limit_bytes: int) -> bytes:
    """A response's body, or its first ``limit_bytes`` + 1 bytes when it is longer."""
    kept = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        kept += chunk
        if len(kept) > limit_bytes:
            break
    return bytes(kept[:limit_bytes + 1])


class WhipOutput(PeerPublish):
    """One WHIP publish of one session (see the module docstring); an ``outputs.Output``.

    Args:
        output_id, session_id: its id and its session's.
        url: the WHIP endpoint.
        token: the bearer token the endpoint wants, if any.
        tracks: makes the (video, audio) tracks of one connection.
        new_peer: makes a peer connection (the channel's census counts it).
        on_state: called on the event loop after each state change.
    """

    kind = "whip"
    remote = "the WHIP endpoint"

    def __init__(self, output_id: str, session_id: str, url: str, token: str | None, *, tracks: TrackPair,
                 new_peer: Callable[[], RTCPeerConnection],
                 on_state: Callable[[WhipOutput], None] | None = None) -> None:
        self.url = check_whip_url(url)
        self._token = check_token(token)
        super().__init__(output_id, session_id, tracks=tracks, new_peer=new_peer, on_state=on_state,
                         secret=self._token)
        self.resource: str | None = None  # the WHIP session URL of the current connection

    def target_shown(self) -> str:
        """The URL without its query."""
        return mask_query(self.url)

    def describe(self) -> OutputStats:
        """For the API and stats: the URL without its query, the token masked."""
        return {**super().describe(), "token": mask_key(self._token) if self._token else None}

    def _new_http(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))

    async def _publish_once(self) -> NoReturn:
        """One WHIP session: offer, answer, connect, then watch until it ends.

        Raises:
            PublishFailure: always, once the session could not be made or has ended (the message says why).
        """
        peer, video, audio = self._open_peer()
        for track in (video, audio):
            peer.addTransceiver(track, direction="sendonly")
        await peer.setLocalDescription(await peer.createOffer())
        answer = await self._post_offer(peer.localDescription.sdp)
        try:
            await peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except (ValueError, TypeError, KeyError, IndexError, AssertionError, AttributeError, StopIteration,
                InternalError, InvalidAccessError, InvalidStateError, OperationError) as exc:
            raise WhipFailure(f"the WHIP endpoint's answer could not be applied ({type(exc).__name__}: {exc})") from exc
        await self._go_live(peer)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Content-Type": content_type} if content_type else {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _post_offer(self, offer: str) -> str:
        """POST the offer; returns the answer and keeps the WHIP session URL (``Location``, resolved against the
        endpoint's URL).

        Raises:
            WhipFailure: the endpoint could not be reached, or did not answer 201 with an SDP answer.
        """
        assert self._http is not None
        try:
            async with self._http.post(self.url, data=offer, headers=self._headers("application/sdp")) as response:
                raw = await _read_at_most(response, MAX_SDP_BYTES)
                body = raw.decode("utf-8", "replace")
                if response.status != 201:
                    raise WhipFailure(f"the WHIP endpoint refused the offer: {response.status} {response.reason}: "
                                      f"{' '.join(body.split())}")
                location = response.headers.get("Location")
        except aiohttp.ClientConnectorError as exc:
            code = exc.os_error.errno
            raise WhipFailure(f"cannot reach the WHIP endpoint at {exc.host}:{exc.port}: "
                              f"{os.strerror(code) if code else exc.os_error}") from exc
        except TimeoutError as exc:
            raise WhipFailure(f"the WHIP endpoint did not answer the offer within {HTTP_TIMEOUT_S:.0f} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise WhipFailure(f"the offer could not be sent to the WHIP endpoint: {exc or type(exc).__name__}") from exc
        if len(raw) > MAX_SDP_BYTES:
            raise WhipFailure(f"the WHIP endpoint's answer is over {MAX_SDP_BYTES} bytes")
        if not body.startswith("v=0"):
            raise WhipFailure("the WHIP endpoint answered 201 without an SDP answer (expected a body starting v=0)")
        if location:
            self.resource = urllib.parse.urljoin(self.url, location)
        else:
            log.warning("output %s: the WHIP endpoint gave no Location (RFC 9725 wants one), so its session cannot "
                        "be deleted", self.output_id)
        return body

    async def _hang_up(self, *, stopping: bool) -> None:
        """End the current WHIP session, if any: DELETE it (best effort), close the peer, stop the tracks."""
        if self.resource is not None:
            assert self._http is not None
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self._http.delete(self.resource, headers=self._headers()) as response:
                    if response.status >= 300:
                        log.warning("output %s: the WHIP endpoint answered DELETE with %d", self.output_id,
                                    response.status)
            self.resource = None
        await self._close_peer()
