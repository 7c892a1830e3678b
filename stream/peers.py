"""WebRTC peers of a channel: answering an offer, and the WHEP viewer that watches a session.

Every peer is answered the same way (``answer``): the remote offer, then a local answer; an offer aiortc
cannot parse or negotiate becomes an ``InputError`` naming why, and the half-made peer is closed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

from twincast.errors import InputError

MAX_SDP_BYTES = 64 * 1024


def new_peer() -> RTCPeerConnection:
    """A peer connection for loopback or LAN use (no STUN/TURN servers)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def answer(peer: RTCPeerConnection, offer_sdp: str) -> str:
    """Apply ``offer_sdp`` and return the local answer's SDP.

    Raises:
        InputError: the offer could not be parsed or negotiated (the peer is closed).
    """
    try:
        await peer.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await peer.setLocalDescription(await peer.createAnswer())
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        await peer.close()
        raise InputError(f"the SDP offer could not be parsed: {exc}") from exc
    except (InternalError, InvalidAccessError, InvalidStateError, OperationError) as exc:
        await peer.close()
        raise InputError(f"WebRTC negotiation failed ({type(exc).__name__}): {exc}") from exc
    return str(peer.localDescription.sdp)


def prefer_video_codec(peer: RTCPeerConnection, sender: RTCRtpSender, codec: str) -> None:
    """Offer only ``codec`` (e.g. ``vp8``) on ``sender``'s transceiver; must precede the remote description, or
    aiortc silently ignores it."""
    mime = f"video/{codec}".lower()
    preferred = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == mime]
    for transceiver in peer.getTransceivers():
        if transceiver.sender is sender:
            transceiver.setCodecPreferences(preferred)


@dataclass
class Viewer:
    """One WHEP viewer: its id (the ``Location`` it was given) and its peer connection."""

    peer: RTCPeerConnection
    viewer_id: str = field(default_factory=lambda: uuid.uuid4().hex)
