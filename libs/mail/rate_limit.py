"""A per-provider send rate held across dispatcher instances without a coordinator.

Each instance takes the share of the global rate that matches its share of `batch.ready`
partitions (re-computed when the assignment changes), and multiplies it by an AIMD factor:
halved on a 429, recovering additively while requests succeed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

_MIN_FACTOR = 0.05
_RECOVERY_PER_SECOND = 0.1
# A short burst allowance: enough to hide scheduling jitter, small enough to keep the
# measured rate within a few percent of the limit.
_BURST_SECONDS = 0.05


class RateLimiter:
    def __init__(self, global_rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.global_rate = global_rate
        self.share = 1.0
        self.factor = 1.0
        self._clock = clock
        self._next_free = clock()
        self._last_adjust = clock()

    @property
    def limited(self) -> bool:
        return self.global_rate > 0

    @property
    def rate(self) -> float:
        """Emails per second this instance may send now (0 when unlimited)."""
        return self.global_rate * self.share * self.factor if self.limited else 0.0

    def set_share(self, assigned_partitions: int, total_partitions: int) -> None:
        # An instance with no partitions sends nothing, but keep a floor so a batch still in
        # hand during a rebalance finishes.
        self.share = max(assigned_partitions, 1) / max(total_partitions, 1)

    def delay_for(self, emails: int) -> float:
        """Reserve `emails` and return how long to wait before sending them."""
        if not self.limited or emails <= 0:
            return 0.0
        now = self._clock()
        start = max(now, self._next_free)
        self._next_free = start + emails / self.rate
        return max(0.0, start - now - _BURST_SECONDS)

    async def acquire(self, emails: int) -> None:
        delay = self.delay_for(emails)
        if delay > 0:
            await asyncio.sleep(delay)

    def throttled(self) -> None:
        """Multiplicative decrease after the provider said 429."""
        self.factor = max(_MIN_FACTOR, self.factor / 2)
        self._last_adjust = self._clock()

    def succeeded(self) -> None:
        """Additive increase, by time elapsed, up to the full share."""
        now = self._clock()
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor + _RECOVERY_PER_SECOND * (now - self._last_adjust))
        self._last_adjust = now
