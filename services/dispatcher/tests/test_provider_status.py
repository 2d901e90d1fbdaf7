"""The provider status snapshot, and a publisher that never lets a failure reach sending."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from libs.mail.circuit_breaker import CircuitBreaker
from libs.mail.rate_limit import RateLimiter
from services.dispatcher.provider_status import ProviderStatus, publish_once, snapshot


@dataclass
class FakeProvider:
    """Only what the snapshot reads: a breaker and a limiter."""

    breaker: CircuitBreaker
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))


class BrokenStore:
    async def publish(self, instance: str, statuses: list[ProviderStatus]) -> None:
        raise ConnectionError("database gone")


def test_an_open_breaker_shows_its_reason_and_a_closed_one_keeps_the_last_error() -> None:
    now = [100.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=lambda: now[0],
                             wall_clock=lambda: 1_800_000_000.0)  # fmt: skip
    limiter = RateLimiter(40)
    limiter.set_share(1, 4)
    providers = {"sendgrid": FakeProvider(breaker, limiter)}
    breaker.record_failure("503: busy")
    breaker.record_failure("503: still busy")
    (opened,) = snapshot(providers)  # type: ignore[arg-type]
    assert (opened.breaker_state, opened.breaker_reason) == ("open", "503: still busy")
    assert opened.rate_limit_per_s == 10
    assert opened.last_error_at == datetime.fromtimestamp(1_800_000_000, UTC)
    now[0] += 10
    assert snapshot(providers)[0].breaker_state == "half_open"  # type: ignore[arg-type]
    breaker.record_success()
    (closed,) = snapshot(providers)  # type: ignore[arg-type]
    assert closed.breaker_state == "closed" and closed.breaker_reason is None
    assert closed.last_error == "503: still busy"


async def test_a_failed_publish_is_reported_not_raised() -> None:
    providers = {"sink": FakeProvider(CircuitBreaker())}
    assert await publish_once(BrokenStore(), "i-1", providers) is False  # type: ignore[arg-type]
