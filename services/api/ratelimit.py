"""Counting failed authentication attempts, to slow down key guessing; who the client is.

Pure. Failures are counted per client address and, separately, per key prefix (the part
shown in key listings: someone who read it cannot try the rest from many addresses).
A key that validates is never refused (see `deps.authenticate`), so these limits can slow a
guesser but never lock out a user, even when many users share one address.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable, Sequence

from libs.common.settings import IpNetwork


def _trusted(address: str, proxies: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: Sequence[IpNetwork]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is read from the right (what our proxies
    appended) and the first address that is not a trusted proxy is the client; anything
    to its left was written by the client and is not believed.
    """
    if not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:64]
    return hops[0][:64] if hops else peer


class FailureLimiter:
    """At most `limit` failures per client within `window_s`; then refuse until they age out.

    In memory, per process: enough to make guessing slow; a shared store is not needed for that.
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.get(client, deque())
        horizon = self.clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may try now."""
        failures = self._recent(client)
        if len(failures) < self.limit:
            return None
        return max(0.0, failures[0] + self.window_s - self.clock())

    def record_failure(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self.max_clients:
            # Bound memory under a spray of addresses: forget the oldest client.
            self._failures.pop(next(iter(self._failures)))
        failures = self._recent(client)
        failures.append(self.clock())
        self._failures[client] = failures
