"""A circuit breaker per provider (pure: the clock is injected).

Closed: requests flow; `failure_threshold` consecutive failed requests (5xx, timeouts,
refused connections: the provider itself failing, not a rejected recipient) open it. Open:
the dispatcher routes new batches to the fallback provider. After `cooldown_s` it lets
traffic through again (half-open): one success closes it, one failure re-opens it.

An auth or configuration error (a revoked key) `trip`s it at once, with its reason: no
number of retries will mend that.

It also keeps the last failure it was told of, with its wall-clock time, for the
operators (the dispatcher publishes it to the `provider_status` table).
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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self.outage_reason: str | None = None
        self._wall_clock = wall_clock
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # seconds since the epoch

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
        self._remember(reason)

    def record_failure(self, reason: str | None = None) -> None:
        self._failures += 1
        if reason is not None:
            self._remember(reason)
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()

    def _remember(self, reason: str) -> None:
        self.last_error = reason[:1000]
        self.last_error_at = self._wall_clock()
