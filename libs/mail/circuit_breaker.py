"""A circuit breaker per provider (pure: the clock is injected).

Closed: requests flow; `failure_threshold` consecutive failed requests (5xx, timeouts,
refused connections: the provider itself failing, not a rejected recipient) open it. Open:
the dispatcher routes new batches to the fallback provider. After `cooldown_s` it lets
traffic through again (half-open): one success closes it, one failure re-opens it.

An auth or configuration error (a revoked key) `trip`s it at once, with its reason: no
number of retries will mend that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self.outage_reason: str | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allows(self) -> bool:
        """Whether new work should go to this provider."""
        return self.state is not BreakerState.OPEN

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self.outage_reason = None

    def trip(self, reason: str) -> None:
        """Open now: the provider refused the account itself."""
        self._failures = max(self._failures, self.failure_threshold)
        self._opened_at = self._clock()
        self.outage_reason = reason

    def record_failure(self) -> None:
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
