"""Per-client limits of the HTTP surface: a token bucket for operator requests, and a lockout after failed tokens.

Both are keyed by the client's address as the socket sees it (``request.remote``). Behind a reverse proxy every
client shares the proxy's address: limit there, or raise these limits. Each keeps at most ``max_clients``
addresses (overflow rule: the least recently seen address is forgotten), so a flood of addresses cannot grow
memory without bound; a forgotten address starts afresh.

Time is injectable (``now``), so tests run the clock by hand.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

MAX_CLIENTS = 4096


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """A token bucket per client: ``burst`` requests at once, refilled at ``rate_per_s``."""

    def __init__(self, rate_per_s: float, burst: int, *, now: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s {rate_per_s} must be positive and burst {burst} at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._now = now
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, client: str) -> float:
        """Spend one token of ``client``'s bucket; returns 0.0 when allowed, else the seconds until a token."""
        now_s = self._now()
        bucket = self._buckets.pop(client, None) or _Bucket(float(self.burst), now_s)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now_s - bucket.updated_s) * self.rate_per_s)
        bucket.updated_s = now_s
        self._buckets[client] = bucket  # most recently seen last
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s


class AuthLockout:
    """After ``max_failures`` wrong tokens within ``lockout_s`` seconds, a client is locked out for ``lockout_s``
    from the last of them: every guarded request is refused meanwhile, even one with the right token (so a guess
    that happens to be right is not confirmed). Failures during a lockout neither count nor extend it."""

    def __init__(self, max_failures: int, lockout_s: float, *, now: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        if max_failures < 1 or lockout_s <= 0:
            raise ValueError(f"max_failures {max_failures} must be at least 1 and lockout_s {lockout_s} positive")
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self._now = now
        self._max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def locked_for(self, client: str) -> float:
        """Seconds ``client`` stays locked out (0.0 when it is not)."""
        failures = self._failures.get(client)
        if failures is None or len(failures) < self.max_failures:
            return 0.0
        remaining_s = failures[-1] + self.lockout_s - self._now()
        if remaining_s <= 0:
            del self._failures[client]
            return 0.0
        return remaining_s

    def failed(self, client: str) -> None:
        """Count a wrong token from ``client``."""
        if self.locked_for(client):
            return
        now_s = self._now()
        failures = self._failures.pop(client, None) or deque(maxlen=self.max_failures)
        while failures and failures[0] <= now_s - self.lockout_s:
            failures.popleft()
        failures.append(now_s)
        self._failures[client] = failures
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)
