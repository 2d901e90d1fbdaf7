"""The per-instance rate: partition share, pacing, AIMD on 429."""

from __future__ import annotations

from libs.mail.rate_limit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_instance_paces_its_share_of_the_global_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1200, clock)
    limiter.set_share(3, 12)  # a quarter of the partitions: 300 emails/s
    assert limiter.rate == 300
    assert limiter.delay_for(300) == 0  # the first second's worth goes now
    assert abs(limiter.delay_for(300) - 0.95) < 1e-9  # the next waits its turn (less burst)
    clock.now += 2.0
    assert limiter.delay_for(30) == 0


def test_throttling_halves_the_rate_and_success_recovers_it() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1000, clock)
    limiter.throttled()
    limiter.throttled()
    assert limiter.rate == 250
    clock.now += 5
    limiter.succeeded()
    assert abs(limiter.factor - 0.75) < 1e-9
    clock.now += 60
    limiter.succeeded()
    assert limiter.factor == 1.0


def test_unlimited_never_waits() -> None:
    limiter = RateLimiter(0)
    assert limiter.delay_for(1_000_000) == 0 and limiter.rate == 0
