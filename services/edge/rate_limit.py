"""Token buckets for the public subscribe form: per client IP and per address. Pure.

In memory, per edge process (documented in docs/design.md): N edges let N times the rate
through, which is enough to stop a flood from one IP or a mail bomb of one address at the
form; the durable cap, at most one confirmation email per address per hour, is the
importer's, in PostgreSQL, where the confirmation is decided.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    """`capacity` tokens per key, refilled at `capacity / period_s` per second."""

    def __init__(
        self,
        capacity: int,
        period_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / period_s
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> bool:
        """Spend one token of `key`; False (nothing spent) when its bucket is empty."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)  # most recently used last
        while len(self._buckets) > self.max_keys:
            # Bound memory under a spray of keys: forget the least recently used (a full
            # bucket again, which only errs on letting a forgotten key through).
            self._buckets.popitem(last=False)
        return allowed
