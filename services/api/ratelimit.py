"""Counting failed authentication attempts per client, to slow down key guessing. Pure."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


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
