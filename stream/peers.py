"""WebRTC peers of a channel: answering an offer, the WHEP viewer that watches a session, and the census that
watches every peer and relay subscription the server makes.

Every peer is answered the same way (``answer``): the remote offer, then a local answer; an offer aiortc
cannot parse or negotiate becomes an ``InputError`` naming why, and the half-made peer is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
import weakref
from dataclasses import dataclass, field

from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

from twincast.errors import InputError

MAX_SDP_BYTES = 64 * 1024
SETTLE_S = 5.0  # how long a close waits for a peer still connecting (see close_peer)


def new_peer() -> RTCPeerConnection:
    """A peer connection for loopback or LAN use (no STUN/TURN servers)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def close_peer(peer: RTCPeerConnection, *, settle_s: float = SETTLE_S) -> None:
    """Close ``peer`` and every sender and receiver it started, once it has finished connecting.

    A peer closed while it is still connecting races aiortc and aioice, as the churn test found (viewers that
    hang up as soon as they have the answer):

    - ICE: a check that succeeds just before the close lets aioice start its consent-freshness task after the
      close has looked for it; that task then probes closed sockets for ~30 s.
    - DTLS: aiortc's ``close`` stops the transceivers, then the transports; a handshake that finishes in between
      starts a sender whose RTCP task runs for ever, keeping the whole peer in memory; one that does not finish
      leaves aiortc's connect task to fail on the closed transport ("Task exception was never retrieved").

    So the close waits (at most ``settle_s``) while the peer is ``connecting``, and once the transports are down
    (then nothing can start any more) the transceivers are stopped again, for a peer that did not settle in time
    (stopping is idempotent).
    """
    if peer.connectionState == "connecting":
        settled = asyncio.Event()

        def on_state() -> None:
            if peer.connectionState != "connecting":
                settled.set()

        peer.on("connectionstatechange", on_state)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), settle_s)
        peer.remove_listener("connectionstatechange", on_state)
    await peer.close()
    for transceiver in peer.getTransceivers():
        await transceiver.stop()


async def answer(peer: RTCPeerConnection, offer_sdp: str) -> str:
    """Apply ``offer_sdp`` and return the local answer's SDP.

    Raises:
        InputError: the offer could not be parsed or negotiated (the peer is closed).
    """
    try:
        await peer.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await peer.setLocalDescription(await peer.createAnswer())
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        await close_peer(peer)
        raise InputError(f"the SDP offer could not be parsed: {exc}") from exc
    except (InternalError, InvalidAccessError, InvalidStateError, OperationError) as exc:
        await close_peer(peer)
        raise InputError(f"WebRTC negotiation failed ({type(exc).__name__}): {exc}") from exc
    return str(peer.localDescription.sdp)


def prefer_codec(peer: RTCPeerConnection, sender: RTCRtpSender, kind: str, codec: str) -> None:
    """Offer only ``codec`` (e.g. ``vp8``, ``opus``) of ``kind`` (``audio``, ``video``) on ``sender``'s
    transceiver; must precede the remote description, or aiortc silently ignores it."""
    mime = f"{kind}/{codec}".lower()
    preferred = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() == mime]
    for transceiver in peer.getTransceivers():
        if transceiver.sender is sender:
            transceiver.setCodecPreferences(preferred)


@dataclass
class Viewer:
    """One WHEP viewer: its id (the ``Location`` it was given), its peer connection, and when it was last heard
    from (``time.monotonic()`` seconds: when it connected, then whenever ``listen`` notices a new RTCP receiver
    report of its)."""

    peer: RTCPeerConnection
    viewer_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    heard_at_s: float = field(default_factory=time.monotonic)
    last_report: datetime.datetime | None = None  # when aiortc stamped the last receiver report seen

    async def listen(self) -> float:
        """Note a receiver report that arrived since the last call; returns when the viewer was last heard from.

        aiortc records each RTCP receiver report of a sender as a ``remote-inbound-rtp`` entry of its stats,
        stamped when it arrived; a new stamp means the viewer is still there and still receiving.
        """
        stamps = []
        for sender in self.peer.getSenders():
            report = await sender.getStats()
            stamps += [entry.timestamp for entry in report.values() if entry.type == "remote-inbound-rtp"]
        if stamps and max(stamps) != self.last_report:
            self.last_report = max(stamps)
            self.heard_at_s = time.monotonic()
        return self.heard_at_s


class Census:
    """Weak references to every peer connection and relay subscription the server has made.

    Their owners (channels) close what they own; the census only watches, so one that outlives its owner — a
    leak — still shows in ``GET /api/debug/resources``.
    """

    def __init__(self) -> None:
        self._peers: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        self._subscriptions: weakref.WeakSet[MediaStreamTrack] = weakref.WeakSet()

    def new_peer(self) -> RTCPeerConnection:
        """A peer connection (``new_peer``), counted."""
        peer = new_peer()
        self._peers.add(peer)
        return peer

    def subscribe(self, relay: MediaRelay, track: MediaStreamTrack) -> MediaStreamTrack:
        """An unbuffered relay subscription to ``track`` (each consumer gets the newest frame), counted."""
        proxy = relay.subscribe(track, buffered=False)
        self._subscriptions.add(proxy)
        return proxy

    def peers(self) -> tuple[int, int]:
        """(peer connections still in memory, those of them not closed)."""
        alive = list(self._peers)
        return len(alive), sum(peer.connectionState != "closed" for peer in alive)

    def live_subscriptions(self) -> int:
        """Relay subscriptions not ended (once started, the ``MediaRelay`` hands each one every frame until it
        ends)."""
        return sum(track.readyState == "live" for track in list(self._subscriptions))
