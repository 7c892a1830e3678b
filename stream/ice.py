"""The ICE servers a viewer should use: STUN, and TURN with short-lived credentials.

A viewer behind a NAT that cannot reach the server's host candidates relays its media through a TURN server.
twincast does not hold TURN passwords: it shares one secret with the TURN server (coturn's ``use-auth-secret``
with ``static-auth-secret``) and mints credentials from it, the "TURN REST API" scheme
(draft-uberti-behave-turn-rest-00) that coturn implements:

    username   = "<expiry, Unix seconds>:<name>"
    credential = base64(HMAC-SHA1(secret, username))

coturn recomputes the HMAC from the username and refuses the allocation when it differs or the expiry has passed,
so a credential is good for ``serve.turn_ttl_s`` seconds and can be checked without any shared database.

Viewers get the servers as RTCIceServer JSON from ``GET /api/ice-servers``, and as RFC 9725 ``Link`` headers
(``rel="ice-server"``) on the WHEP answer. The secret itself is never sent or logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twincast.errors import InputError

HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?)"  # a name, IPv4, or [IPv6]
STUN_URL = re.compile(rf"stuns?:{HOST}(?::\d{{1,5}})?")
TURN_URL = re.compile(rf"turns?:{HOST}(?::\d{{1,5}})?(?:\?transport=(?:udp|tcp))?")
MIN_SECRET_CHARS = 16
TTL_RANGE_S = (60.0, 7 * 86_400.0)  # a minute to a week
TURN_NAME = "twincast"  # the part of the username after the expiry (a random suffix tells requests apart)


@dataclass(frozen=True)
class IceServer:
    """One entry of an RTCConfiguration's ``iceServers``: its URLs, and TURN credentials when it has them."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The RTCIceServer dictionary a browser's ``RTCPeerConnection`` takes."""
        entry: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None and self.credential is not None:
            entry.update(username=self.username, credential=self.credential, credentialType="password")
        return entry

    def link_headers(self) -> list[str]:
        """One RFC 9725 ``Link`` header value per URL (``rel="ice-server"``, with the credentials for TURN)."""
        values = []
        for url in self.urls:
            value = f'<{url}>; rel="ice-server"'
            if self.username is not None and self.credential is not None:
                value += (f'; username="{self.username}"; credential="{self.credential}"'
                          '; credential-type="password"')
            values.append(value)
        return values


def check_ice_settings(stun_urls: Sequence[str], turn_urls: Sequence[str], turn_secret: str | None,
                       turn_ttl_s: float) -> None:
    """Check the serve settings that describe the ICE servers (see ``stream.config.ServeConfig``).

    Raises:
        InputError: a URL of the wrong scheme or form, TURN URLs without a secret (or a secret without TURN URLs,
            or one too short to be one), or a credential lifetime outside a minute to a week.
    """
    for url in stun_urls:
        if not STUN_URL.fullmatch(url):
            raise InputError(f"serve stun_urls: {url!r} is not a STUN URL; expected stun:HOST[:PORT], e.g. "
                             "stun:stun.example.com:3478")
    for url in turn_urls:
        if not TURN_URL.fullmatch(url):
            raise InputError(f"serve turn_urls: {url!r} is not a TURN URL; expected turn:HOST[:PORT] or "
                             "turns:HOST[:PORT], optionally with ?transport=udp or ?transport=tcp, e.g. "
                             "turn:turn.example.com:3478?transport=udp")
    if turn_urls and not turn_secret:
        raise InputError("serve turn_urls are set but the TURN secret is not: set TWINCAST_SERVE_TURN_SECRET to the "
                         "TURN server's static-auth-secret (coturn, use-auth-secret)")
    if turn_secret and not turn_urls:
        raise InputError("the TURN secret (TWINCAST_SERVE_TURN_SECRET) is set but serve turn_urls is empty: name the "
                         "TURN server, e.g. TWINCAST_SERVE_TURN_URLS=turn:turn.example.com:3478")
    if turn_secret is not None and len(turn_secret) < MIN_SECRET_CHARS:
        raise InputError(f"the TURN secret must be at least {MIN_SECRET_CHARS} characters (e.g. openssl rand -hex 32)")
    low, high = TTL_RANGE_S
    if not low <= turn_ttl_s <= high:
        raise InputError(f"serve turn_ttl_s {turn_ttl_s} must be in {low:g}..{high:g} seconds")


def turn_credentials(secret: str, name: str, expires_at: int) -> tuple[str, str]:
    """The TURN REST API username and credential for ``name``, good until ``expires_at`` (Unix seconds)."""
    username = f"{expires_at}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(stun_urls: Sequence[str], turn_urls: Sequence[str], turn_secret: str | None, turn_ttl_s: float,
                *, now: float | None = None) -> list[IceServer]:
    """The ICE servers for one viewer: the STUN servers, then the TURN servers with fresh credentials (a name of
    its own per call, so a TURN server's log tells viewers apart). Empty when none are configured."""
    servers = [IceServer(tuple(stun_urls))] if stun_urls else []
    if turn_urls and turn_secret:
        expires_at = int((time.time() if now is None else now) + turn_ttl_s)
        username, credential = turn_credentials(turn_secret, f"{TURN_NAME}-{secrets.token_hex(4)}", expires_at)
        servers.append(IceServer(tuple(turn_urls), username, credential))
    return servers


class IceSettings(Protocol):
    """The serve settings that name the ICE servers (``stream.config.ServeConfig`` has them; this module is
    imported by the config to check them, so it names only what it reads)."""

    @property
    def stun_urls(self) -> tuple[str, ...]: ...

    @property
    def turn_urls(self) -> tuple[str, ...]: ...

    @property
    def turn_secret(self) -> str | None: ...

    @property
    def turn_ttl_s(self) -> float: ...


def for_viewer(config: IceSettings) -> list[IceServer]:
    """``ice_servers`` from the serve settings, for one viewer now."""
    return ice_servers(config.stun_urls, config.turn_urls, config.turn_secret, config.turn_ttl_s)
