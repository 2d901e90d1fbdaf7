"""When a failed webhook delivery is tried again, and when it is given up. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: the n-th retry waits base * 2**(n-1), at most `cap`, with
    up to `jitter` of it taken off at random (so endpoints that failed together do not
    all come back at once). Deliveries older than `give_up_after` are not tried again."""

    base_s: float = 5.0
    cap_s: float = 3600.0
    give_up_after_s: float = 24 * 3600.0
    jitter: float = 0.2

    def delay(self, failed_attempts: int, rand: random.Random | None = None) -> float:
        """Seconds to wait after the `failed_attempts`-th failure (1 for the first)."""
        exponent = max(0, failed_attempts - 1)
        # 2**60 overflows nothing in Python, but keep the float small.
        raw = self.base_s * (2 ** min(exponent, 60))
        delay = min(raw, self.cap_s)
        if self.jitter:
            delay -= delay * self.jitter * (rand or random).random()
        return delay

    def next_attempt(
        self, created_at: float, now: float, failed_attempts: int, rand: random.Random | None = None
    ) -> float | None:
        """Unix time of the next try after a failure at `now`, or None to give up: the
        event was first due at `created_at`, and is not tried past `give_up_after`."""
        if now - created_at >= self.give_up_after_s:
            return None
        at = now + self.delay(failed_attempts, rand)
        # One last try at the deadline rather than none past it.
        return min(at, created_at + self.give_up_after_s)
