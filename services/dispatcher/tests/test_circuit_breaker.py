"""The per-provider circuit breaker, and failover to the fallback provider."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from libs.common.embedded import free_port
from libs.mail.circuit_breaker import BreakerState, CircuitBreaker
from libs.mail.headers import HeaderPolicy
from libs.mail.providers.sendgrid import RetryPolicy, SendGridProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.sink import SinkHandle, start_sink
from services.dispatcher.content_store import ContentRepository
from services.dispatcher.dispatch import BatchDispatcher
from services.dispatcher.ledger_store import PostgresLedger
from services.dispatcher.metrics import FAILOVERS
from services.dispatcher.tests.support import insert_content, make_batch


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_the_breaker_and_the_cooldown_half_opens_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive: counting starts again
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allows()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allows()
    clock.now += 10
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.record_failure()  # the probe failed: open again, for a whole cooldown
    assert breaker.state is BreakerState.OPEN
    clock.now += 10
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


async def test_batches_fail_over_to_the_fallback_while_the_breaker_is_open(
    pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    retry = RetryPolicy(max_attempts=2, initial_s=0.01, max_wait_s=0.02)
    async with aiohttp.ClientSession() as session:
        # "sendgrid" points at a port nobody listens on: every request is refused.
        dead = SendGridProvider(
            "sendgrid", f"http://127.0.0.1:{free_port()}", "k", session,
            concurrency=2, limiter=RateLimiter(0), retry=retry,
            breaker=CircuitBreaker(failure_threshold=2, cooldown_s=60),
        )  # fmt: skip
        fallback = SendGridProvider(
            "sink", sink.url, "k", session, concurrency=2, limiter=RateLimiter(0), retry=retry
        )
        dispatcher = BatchDispatcher(
            content=ContentRepository(pool),
            ledger=PostgresLedger(pool),
            providers={"sendgrid": dead, "sink": fallback},
            headers=HeaderPolicy("http://api", "k"),
            owner="breaker-test",
            mode="at_most_once",
            lease_s=30,
            fallback="sink",
        )
        campaign = uuid.uuid4()
        content = await insert_content(pool, campaign)
        batches = [
            make_batch(campaign, content, n, 5, batches_total=2, provider="sendgrid")
            for n in range(2)
        ]
        switched = FAILOVERS.labels("sendgrid", "sink")
        before = switched._value.get()

        first = await dispatcher.dispatch(batches[0])
        # Two refused attempts opened the breaker; this batch had already gone to sendgrid.
        assert {o.status for o in first.outcomes} == {"failed"}
        assert first.provider == "sendgrid" and not dead.breaker.allows()

        second = await dispatcher.dispatch(batches[1])
        assert {o.status for o in second.outcomes} == {"sent"}
        assert second.provider == "sink"
        assert switched._value.get() == before + 1
        assert sink.stats()["messages"] == 5
