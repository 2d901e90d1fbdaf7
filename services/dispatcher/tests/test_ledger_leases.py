"""Leases and fencing of the send ledger against real PostgreSQL (issue 11 items 2, 3, 5, 6,
12), with a real aiosmtpd server that takes 50 ms a message where a slow provider is needed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from libs.common.events import RecipientOutcome
from libs.common.suppressions import add_suppression, suppressed_among
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Outbox
from libs.mail.providers.base import ProgressCallback, Provider
from libs.mail.providers.sendgrid import RetryPolicy, SendGridProvider
from libs.mail.providers.smtp import SMTPProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.sink import SinkHandle, start_sink
from services.dispatcher.content_store import ContentRepository
from services.dispatcher.dispatch import BatchDispatcher, HandedBack
from services.dispatcher.ledger import Claim
from services.dispatcher.ledger_store import PostgresLedger
from services.dispatcher.tests.support import (
    SlowRelay,
    insert_content,
    make_batch,
    slow_relay_server,
)


async def expire_lease(pool: asyncpg.Pool, batch_id: str) -> None:
    """What the database's clock says once a lease ran out."""
    await pool.execute(
        "UPDATE send_ledger SET lease_until = now() - interval '1 second' WHERE batch_id = $1",
        batch_id,
    )


# ----- the store's fencing -----


async def first_claim(pool: asyncpg.Pool, owner: str, lease_s: float = 30) -> Claim:
    """A fresh batch claimed by `owner`."""
    campaign = uuid.uuid4()
    claim = await PostgresLedger(pool).claim(f"{campaign}:0", campaign, owner, lease_s)
    assert claim is not None and claim.number == 1
    return claim


async def test_a_live_lease_is_not_taken_over_and_an_expired_one_is_under_a_new_claim(
    pool: asyncpg.Pool,
) -> None:
    ledger = PostgresLedger(pool)
    first = await first_claim(pool, "a")
    batch_id = first.batch_id
    campaign = uuid.UUID(batch_id.split(":")[0])
    assert await ledger.claim(batch_id, campaign, "b", 30) is None
    assert await ledger.take_over(first, "b", 30) is None, "a live lease was taken over"
    await expire_lease(pool, batch_id)
    second = await ledger.take_over(first, "b", 30)
    assert second is not None and second.owner == "b" and second.number == 2
    # The same stale claim cannot be taken over twice (a third instance read it too).
    assert await ledger.take_over(first, "c", 30) is None


async def test_a_former_owner_cannot_write_after_a_takeover(pool: asyncpg.Pool) -> None:
    ledger = PostgresLedger(pool)
    slow = await first_claim(pool, "slow")
    batch_id = slow.batch_id
    assert await ledger.renew(slow, 30)
    await expire_lease(pool, batch_id)
    taker = await ledger.take_over(slow, "taker", 30)
    assert taker is not None
    outcome = RecipientOutcome(recipient_id=1, email="a@example.com", status="sent")
    assert not await ledger.renew(slow, 30)
    assert not await ledger.add_progress(slow, [outcome])
    assert not await ledger.finish(slow, {"who": "slow"})
    assert await ledger.finish(taker, {"who": "taker"})
    assert not await ledger.finish(taker, {"who": "taker again"}), "finished twice"
    row = await pool.fetchrow("SELECT * FROM send_ledger WHERE batch_id = $1", batch_id)
    assert row["state"] == "done" and row["owner"] == "taker" and row["result"] == {"who": "taker"}
    entry = await ledger.get(batch_id)
    assert entry is not None and entry.recorded_outcomes() == []


async def test_renewal_extends_the_lease_by_the_database_clock(pool: asyncpg.Pool) -> None:
    ledger = PostgresLedger(pool)
    claim = await first_claim(pool, "a", lease_s=1)
    batch_id = claim.batch_id
    await expire_lease(pool, batch_id)
    assert (entry := await ledger.get(batch_id)) is not None and entry.lease_expired
    assert await ledger.renew(claim, 60)
    assert (entry := await ledger.get(batch_id)) is not None and not entry.lease_expired


# ----- the dispatcher under leases -----


@pytest.fixture
def slow_smtp() -> Iterator[tuple[int, SlowRelay]]:
    with slow_relay_server() as server:
        yield server


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


def smtp_provider(port: int) -> SMTPProvider:
    return SMTPProvider(
        host="127.0.0.1", port=port, username="", password="", tls="none",
        max_connections=8, timeout_s=10, limiter=RateLimiter(0), retry=RetryPolicy(2, 0.01, 0.05),
    )  # fmt: skip


def make_dispatcher(
    pool: asyncpg.Pool,
    providers: dict[str, Provider],
    owner: str,
    **options: Any,
) -> BatchDispatcher:
    return BatchDispatcher(
        content=ContentRepository(pool),
        ledger=PostgresLedger(pool),
        providers=providers,
        headers=HeaderPolicy("http://api", "k"),
        owner=owner,
        mode=options.pop("mode", "at_most_once"),
        lease_s=options.pop("lease_s", 30.0),
        **options,
    )


async def test_a_live_lease_is_waited_for_whatever_the_dispatchers_clock_says(
    pool: asyncpg.Pool, slow_smtp: tuple[int, SlowRelay]
) -> None:
    """A renewed lease outlives its first period; a dispatcher whose clock runs an hour
    ahead still waits for it, then replays the owner's result: nothing is sent twice."""
    port, handler = slow_smtp
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 40, provider="smtp")
    # 40 messages at 250 ms over 8 connections take ~1.25 s: longer than the 1 s lease,
    # which the owner renews every 0.25 s.
    handler.delay_s = 0.25
    owner = make_dispatcher(pool, {"smtp": smtp_provider(port)}, "owner", lease_s=1.0)
    ahead = make_dispatcher(
        pool,
        {"smtp": smtp_provider(port)},
        "ahead",
        lease_s=1.0,
        clock=lambda: datetime.now(UTC) + timedelta(hours=1),
    )
    sending = asyncio.create_task(owner.dispatch(batch))
    # The claim is a row in PostgreSQL: there is no event to wait on.
    while await PostgresLedger(pool).get(batch.batch_id) is None:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    other = await asyncio.wait_for(ahead.dispatch(batch), 60)
    first = await sending
    assert not first.replayed and other.replayed
    assert other.outcomes == first.outcomes
    assert {o.status for o in first.outcomes} == {"sent"}
    assert max(handler.received.values()) == 1 and len(handler.received) == 40


class ExplodingProvider:
    """The sink's SendGrid provider, but its send raises after half the batch went out."""

    def __init__(self, inner: SendGridProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.limiter = inner.limiter
        self.breaker = inner.breaker

    async def send(self, outbox: Outbox, on_progress: ProgressCallback) -> list[RecipientOutcome]:
        half = outbox.individual[: len(outbox.individual) // 2]
        done = await self.inner.send(Outbox(outbox.sender, individual=half), on_progress)
        assert done
        raise RuntimeError("boom in the middle of a batch")

    async def close(self) -> None:
        await self.inner.close()


async def test_an_exception_in_a_send_settles_every_recipient_and_leaves_no_sending_row(
    pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    campaign = uuid.uuid4()
    # A for-loop in the body makes each message rendered on its own (no substitutions).
    content = await insert_content(pool, campaign, html="{% for c in 'ab' %}{{ c }}{% endfor %}")
    batch = make_batch(campaign, content, 0, 10)
    async with aiohttp.ClientSession() as session:
        inner = SendGridProvider(
            "sink", sink.url, "k", session, concurrency=2, limiter=RateLimiter(0),
            retry=RetryPolicy(2, 0.01, 0.05),
        )  # fmt: skip
        d = make_dispatcher(pool, {"sink": ExplodingProvider(inner)}, "me")  # type: ignore[dict-item]
        result = await d.dispatch(batch)
    statuses = Counter(o.status for o in result.outcomes)
    assert statuses == {"sent": 5, "unknown": 5}, statuses
    assert all("RuntimeError" in (o.error or "") for o in result.outcomes if o.status == "unknown")
    state = await pool.fetchval("SELECT state FROM send_ledger WHERE batch_id = $1", batch.batch_id)
    assert state == "done"


async def test_a_stopping_dispatcher_claims_nothing_even_without_a_rate_limit(
    pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 5)
    async with aiohttp.ClientSession() as session:
        provider = SendGridProvider(
            "sink", sink.url, "k", session, concurrency=2, limiter=RateLimiter(0),
            retry=RetryPolicy(2, 0.01, 0.05),
        )  # fmt: skip
        d = make_dispatcher(pool, {"sink": provider}, "me", stopping=lambda: True)
        with pytest.raises(HandedBack) as handed:
            await d.dispatch(batch)
    assert handed.value.reason == "stopping"
    assert await PostgresLedger(pool).get(batch.batch_id) is None
    assert sink.stats()["messages"] == 0


async def test_recipients_suppressed_since_planning_are_reported_suppressed_and_not_mailed(
    pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 10)
    at_emit = batch.recipients[0]
    at_claim = batch.recipients[1]
    batch = batch.model_copy(update={"suppressed_ids": [at_emit.recipient_id]})
    await add_suppression(pool, at_claim.email.upper(), "unsubscribe")
    async with aiohttp.ClientSession() as session:
        provider = SendGridProvider(
            "sink", sink.url, "k", session, concurrency=2, limiter=RateLimiter(0),
            retry=RetryPolicy(2, 0.01, 0.05),
        )  # fmt: skip

        async def check(emails: list[str]) -> set[str]:
            return await suppressed_among(pool, emails)

        result = await make_dispatcher(pool, {"sink": provider}, "me", suppressed=check).dispatch(
            batch
        )
    by_id = {o.recipient_id: o.status for o in result.outcomes}
    assert (
        by_id[at_emit.recipient_id] == "suppressed" and by_id[at_claim.recipient_id] == "suppressed"
    )
    assert Counter(by_id.values()) == {"sent": 8, "suppressed": 2}
    mailed = {m.email for m in sink.messages}
    assert at_emit.email not in mailed and at_claim.email not in mailed and len(mailed) == 8


async def test_only_the_batch_about_to_go_out_is_claimed(
    pool: asyncpg.Pool, slow_smtp: tuple[int, SlowRelay]
) -> None:
    """Six batches handed over at once: one at a time is claimed, so a kill at any moment
    leaves at most one batch's recipients `unknown`."""
    port, handler = slow_smtp
    campaign = uuid.uuid4()
    content = await insert_content(pool, campaign)
    batches = [make_batch(campaign, content, n, 16, provider="smtp") for n in range(6)]
    d = make_dispatcher(pool, {"smtp": smtp_provider(port)}, "me", max_sending=1)
    work = asyncio.gather(*(d.dispatch(b) for b in batches))
    most_sending = 0
    task = asyncio.ensure_future(work)
    while not task.done():
        sending = await pool.fetchval(
            "SELECT count(*) FROM send_ledger WHERE campaign_id = $1 AND state = 'sending'",
            campaign,
        )
        most_sending = max(most_sending, sending)
        await asyncio.sleep(0.01)
    results: list[Any] = await task
    assert all({o.status for o in r.outcomes} == {"sent"} for r in results)
    assert most_sending == 1, f"{most_sending} batches claimed at once"
    assert sum(handler.received.values()) == 96


async def test_a_ledger_row_cannot_be_done_without_the_result_it_replays(
    pool: asyncpg.Pool,
) -> None:
    campaign = uuid.uuid4()
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO send_ledger (batch_id, campaign_id, state, owner)"
            " VALUES ($1, $2, 'done', 'd-1')",
            f"{campaign}:0",
            campaign,
        )
