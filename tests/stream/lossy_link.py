"""A bad network in user space: a seeded UDP relay between a WebRTC client and server on loopback.

The kernel of the development and CI machines has no netem (``tc qdisc add … netem`` answers "Specified qdisc
kind is unknown"), and nothing else in it adds jitter (nftables can drop packets, tbf can limit a rate). So the
link is built here: every datagram between the two peers passes through this relay, which drops a seeded
fraction of them (``loss``), holds each one back by a random extra delay (uniform in 0..``jitter_ms``, so packets
also arrive out of order), or drops everything (``blackhole``: a peer that has vanished). The settings can be
changed while media flows.

The peers are put behind it by rewriting the ICE candidates of the offer (the client's) and of the answer (the
server's) to ports of the relay: for every real address R a peer announces, the relay binds a proxy socket that
stands for R. A datagram reaching the proxy of T from a real address S is sent on from the proxy of S to T, so
each peer sees the other only at the proxy addresses it was told, and nothing else changes (STUN, DTLS, SRTP and
RTCP pass unchanged, or not at all). Candidates that cannot go through it (IPv6, TCP) are removed from the SDP.

SRTP encrypts payloads but not RTP headers nor the first RTCP header, so the relay also notes what it carried
(``MediaLog``): the size of each video frame delivered to the client (keyframes are several times larger than
the others) and each keyframe request (PLI or FIR) and NACK the client sent, when it sent them alone (aiortc
does; a browser's compound RTCP hides them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import struct
import time
from dataclasses import dataclass, field
from typing import cast

Address = tuple[str, int]


@dataclass
class Direction:
    """What one direction of the link did: datagrams forwarded and dropped (by loss, or by the blackhole)."""

    forwarded: int = 0
    lost: int = 0
    blackholed: int = 0


@dataclass
class VideoFrameSeen:
    """One video frame as the relay delivered it to the client: its RTP timestamp, size and delivery times."""

    rtp_timestamp: int
    first_s: float  # time.monotonic() of its first packet's delivery
    last_s: float
    size_bytes: int = 0
    packets: int = 0


@dataclass
class MediaLog:
    """What the relay saw of the media: video frames delivered (in order of their first packet), and the client's
    keyframe requests (PLI or FIR) and NACKs, as time.monotonic() of their arrival at the relay."""

    video_ssrcs: set[int] = field(default_factory=set)  # from the answer: the video sender (and its RTX)
    video_frames: dict[tuple[int, int], VideoFrameSeen] = field(default_factory=dict)  # by (ssrc, timestamp)
    keyframe_requests_s: list[float] = field(default_factory=list)
    nacks_s: list[float] = field(default_factory=list)

    def frames(self) -> list[VideoFrameSeen]:
        """The video frames of the main SSRC (retransmissions aside), in delivery order."""
        main = min(self.video_ssrcs, default=None, key=self._first_seen)
        return [frame for (ssrc, _), frame in self.video_frames.items() if ssrc == main]

    def _first_seen(self, ssrc: int) -> float:
        times = [frame.first_s for (key, _), frame in self.video_frames.items() if key == ssrc]
        return min(times, default=float("inf"))

    def note_down(self, data: bytes, at_s: float) -> None:
        """A datagram delivered to the client at ``at_s``: if it is video RTP, count it in its frame."""
        if len(data) < 12 or data[0] >> 6 != 2 or 192 <= data[1] <= 223:
            return  # not RTP (STUN, DTLS, or RTCP)
        timestamp, ssrc = struct.unpack_from("!II", data, 4)
        if ssrc not in self.video_ssrcs:
            return
        frame = self.video_frames.setdefault((ssrc, timestamp), VideoFrameSeen(timestamp, at_s, at_s))
        frame.last_s = max(frame.last_s, at_s)
        frame.size_bytes += len(data)
        frame.packets += 1

    def note_up(self, data: bytes, at_s: float) -> None:
        """A datagram from the client: a lone PLI/FIR (payload-specific feedback) or NACK is noted."""
        if len(data) < 8 or data[0] >> 6 != 2:
            return
        kind, fmt = data[1], data[0] & 0x1F
        if kind == 206 and fmt in (1, 4):
            self.keyframe_requests_s.append(at_s)
        elif kind == 205 and fmt == 1:
            self.nacks_s.append(at_s)


@dataclass
class LinkCounts:
    """Both directions: ``down`` is server → client (media), ``up`` is client → server (RTCP, STUN)."""

    down: Direction = field(default_factory=Direction)
    up: Direction = field(default_factory=Direction)
    unknown_source: int = 0  # datagrams from an address no SDP announced (dropped)


class _Proxy(asyncio.DatagramProtocol):
    """A relay socket standing for one real peer address."""

    def __init__(self, link: LossyLink, stands_for: Address, client_side: bool) -> None:
        self.link = link
        self.stands_for = stands_for
        self.client_side = client_side  # it stands for an address of the client (so the server sends to it)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not its subclass on every Python

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.link._forward(self, data, (str(addr[0]), int(str(addr[1]))))


class LossyLink:
    """The relay (see the module docstring); ``loss`` is a fraction in 0..1, ``jitter_ms`` the largest extra
    delay. Use as ``async with LossyLink(...) as link`` and pass ``link.rewrite_offer``/``link.rewrite_answer``
    to the client."""

    def __init__(self, *, loss: float = 0.0, jitter_ms: float = 0.0, seed: int = 0, host: str = "127.0.0.1"
                 ) -> None:
        self.loss = loss
        self.jitter_ms = jitter_ms
        self.blackhole = False
        self.counts = LinkCounts()
        self.media = MediaLog()
        self._host = host
        self._random = random.Random(seed)
        self._proxies: dict[Address, _Proxy] = {}

    @property
    def loss(self) -> float:
        """The fraction of datagrams dropped, each direction."""
        return self._loss

    @loss.setter
    def loss(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"loss {fraction!r} must be a fraction in 0..1")
        self._loss = fraction

    @property
    def jitter_ms(self) -> float:
        """The largest extra delay of a datagram, in milliseconds (each gets uniform 0..this)."""
        return self._jitter_ms

    @jitter_ms.setter
    def jitter_ms(self, value: float) -> None:
        if not 0.0 <= value <= 10_000.0:
            raise ValueError(f"jitter_ms {value!r} must be in 0..10000")
        self._jitter_ms = value

    async def __aenter__(self) -> LossyLink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every proxy socket (datagrams still being held back are dropped)."""
        for proxy in self._proxies.values():
            if proxy.transport is not None:
                proxy.transport.close()
        self._proxies.clear()

    async def rewrite_offer(self, sdp: str) -> str:
        """The client's offer with its candidates replaced by proxies of the relay."""
        return await self._rewrite(sdp, client_side=True)

    async def rewrite_answer(self, sdp: str) -> str:
        """The server's answer with its candidates replaced by proxies of the relay (its video SSRCs noted)."""
        for section in sdp.split("m=")[1:]:
            if section.startswith("video"):
                self.media.video_ssrcs.update(int(ssrc) for ssrc in re.findall(r"^a=ssrc:(\d+) ", section, re.M))
        return await self._rewrite(sdp, client_side=False)

    async def _rewrite(self, sdp: str, *, client_side: bool) -> str:
        lines = []
        for line in sdp.splitlines():
            if line.startswith("a=candidate:"):
                fields = line.split(" ")
                transport, ip, port = fields[2].lower(), fields[4], int(fields[5])
                if transport != "udp" or not isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address):
                    continue  # could bypass the relay
                proxy = await self._proxy((ip, port), client_side)
                assert proxy.transport is not None
                fields[4], fields[5] = self._host, str(proxy.transport.get_extra_info("sockname")[1])
                line = " ".join(fields)
            lines.append(line)
        return "\r\n".join(lines) + "\r\n"

    async def _proxy(self, stands_for: Address, client_side: bool) -> _Proxy:
        if stands_for not in self._proxies:
            loop = asyncio.get_running_loop()
            _, proxy = await loop.create_datagram_endpoint(lambda: _Proxy(self, stands_for, client_side),
                                                           local_addr=(self._host, 0))
            self._proxies[stands_for] = proxy
        return self._proxies[stands_for]

    def _forward(self, receiver: _Proxy, data: bytes, source: Address) -> None:
        """A datagram for ``receiver.stands_for`` came from ``source``: send it on from the proxy of ``source``."""
        direction = self.counts.up if not receiver.client_side else self.counts.down
        sender = self._proxies.get(source)
        if sender is None or sender.transport is None:
            self.counts.unknown_source += 1
            return
        if self.blackhole:
            direction.blackholed += 1
            return
        if self._random.random() < self._loss:
            direction.lost += 1
            return
        direction.forwarded += 1
        delay_s = self._random.uniform(0.0, self._jitter_ms / 1000.0)
        if receiver.client_side:
            self.media.note_down(data, time.monotonic() + delay_s)
        else:
            self.media.note_up(data, time.monotonic())
        if delay_s <= 0.0:
            sender.transport.sendto(data, receiver.stands_for)
        else:
            asyncio.get_running_loop().call_later(delay_s, _send_later, sender, data, receiver.stands_for)


def _send_later(sender: _Proxy, data: bytes, target: Address) -> None:
    """Send a held-back datagram, unless the link was closed meanwhile."""
    if sender.transport is not None and not sender.transport.is_closing():
        sender.transport.sendto(data, target)
