"""Pause and cancel as every dispatcher applies them, against real PostgreSQL and the sink.

The campaign's status is changed the way the API does it (campaigns.status); the
dispatcher reads it through `CampaignStatuses`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from libs.common.events import BatchReady
from libs.mail.headers import HeaderPolicy
from libs.mail.providers.sendgrid import RetryPolicy, SendGridProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.sink import SinkHandle, start_sink
from services.dispatcher.campaign_status import CampaignStatuses
from services.dispatcher.content_store import ContentRepository
from services.dispatcher.dispatch import BatchDispatcher, HandedBack
from services.dispatcher.ledger_store import PostgresLedger
from services.dispatcher.tests.support import insert_content, make_batch

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


@pytest.fixture
async def statuses(pool: asyncpg.Pool) -> AsyncIterator[CampaignStatuses]:
    found = CampaignStatuses(pool, refresh_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(found.run(stop))
    yield found
    stop.set()
    await task


async def new_campaign(pool: asyncpg.Pool, status: str = "in_progress") -> uuid.UUID:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('control') RETURNING id")
    return await pool.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status)"
        " VALUES ('c', 's', 'h', 'news@example.com', $1, 'sink', $2) RETURNING id",
        list_id,
        status,
    )


async def set_status(pool: asyncpg.Pool, campaign: uuid.UUID, status: str) -> None:
    await pool.execute("UPDATE campaigns SET status = $2 WHERE id = $1", campaign, status)


async def batches(pool: asyncpg.Pool, campaign: uuid.UUID, n: int, size: int) -> list[BatchReady]:
    content = await insert_content(pool, campaign)
    return [make_batch(campaign, content, b, size, batches_total=n) for b in range(n)]


async def ledger_rows(pool: asyncpg.Pool, campaign: uuid.UUID) -> int:
    return await pool.fetchval(  # type: ignore[no-any-return]
        "SELECT count(*) FROM send_ledger WHERE campaign_id = $1", campaign
    )


def dispatcher(
    pool: asyncpg.Pool,
    sink: SinkHandle,
    session: aiohttp.ClientSession,
    statuses: CampaignStatuses,
    rate: float = 0,
) -> BatchDispatcher:
    provider = SendGridProvider(
        "sink", sink.url, "k", session,
        concurrency=4, limiter=RateLimiter(rate), retry=RetryPolicy(2, 0.01, 0.02),
    )  # fmt: skip
    return BatchDispatcher(
        content=ContentRepository(pool),
        ledger=PostgresLedger(pool),
        providers={"sink": provider},
        headers=HeaderPolicy("http://api", "k"),
        owner="control-test",
        mode="at_most_once",
        lease_s=30,
        gate=statuses,
    )


def received(sink: SinkHandle, campaign: uuid.UUID) -> int:
    return sum(sink.state.received_in(str(campaign)).values())


async def test_a_paused_campaigns_batch_is_handed_back_untouched_and_sent_after_resume(
    pool: asyncpg.Pool, sink: SinkHandle, statuses: CampaignStatuses
) -> None:
    campaign = await new_campaign(pool, "paused")
    (batch,) = await batches(pool, campaign, 1, 20)
    async with aiohttp.ClientSession() as session:
        d = dispatcher(pool, sink, session, statuses)
        with pytest.raises(HandedBack) as handed:
            await d.dispatch(batch)
        assert handed.value.reason == "paused"
        assert received(sink, campaign) == 0 and await ledger_rows(pool, campaign) == 0

        await set_status(pool, campaign, "in_progress")
        # No waiting for a refresh: a stale `paused` is always checked with the database.
        result = await d.dispatch(batch.model_copy(update={"emitted": 2}))
    assert {o.status for o in result.outcomes} == {"sent"}
    assert received(sink, campaign) == 20


async def test_a_cancelled_campaigns_recipients_are_reported_cancelled_once_and_for_all(
    pool: asyncpg.Pool, sink: SinkHandle, statuses: CampaignStatuses
) -> None:
    campaign = await new_campaign(pool, "cancelled")
    (batch,) = await batches(pool, campaign, 1, 10)
    async with aiohttp.ClientSession() as session:
        d = dispatcher(pool, sink, session, statuses)
        result = await d.dispatch(batch)
        assert [o.status for o in result.outcomes] == ["cancelled"] * 10
        assert result.outcomes[0].error and "cancelled" in result.outcomes[0].error
        # A later copy replays the settled result (the ledger says done).
        again = await d.dispatch(batch.model_copy(update={"emitted": 2}))
    assert again.replayed and again.outcomes == result.outcomes
    assert received(sink, campaign) == 0


async def test_batches_queued_behind_the_rate_limit_stop_within_two_seconds_of_a_pause(
    pool: asyncpg.Pool, sink: SinkHandle, statuses: CampaignStatuses
) -> None:
    campaign = await new_campaign(pool)
    queued = await batches(pool, campaign, 6, 50)
    async with aiohttp.ClientSession() as session:
        # 100 emails/s: one 50-recipient batch every half second, 3 s for all six.
        d = dispatcher(pool, sink, session, statuses, rate=100)
        tasks = [asyncio.create_task(d.dispatch(b)) for b in queued]
        deadline = time.monotonic() + 10
        while received(sink, campaign) == 0:
            assert time.monotonic() < deadline, "the first batch was never sent"
            await asyncio.sleep(0.02)
        await set_status(pool, campaign, "paused")
        paused_at = time.monotonic()
        settled = await asyncio.gather(*tasks, return_exceptions=True)
        took = time.monotonic() - paused_at
    handed_back = [s for s in settled if isinstance(s, HandedBack)]
    sent = [s for s in settled if not isinstance(s, BaseException)]
    assert took < 2.0, f"the pause took {took:.2f} s to take effect"
    assert len(handed_back) >= 3, settled  # the ones due after the pause
    assert len(handed_back) + len(sent) == 6
    # Handed-back batches left no trace in the ledger; the sent ones all arrived.
    assert await ledger_rows(pool, campaign) == len(sent)
    assert received(sink, campaign) == 50 * len(sent)


async def test_a_cancelled_campaigns_batch_is_not_rendered(
    pool: asyncpg.Pool, sink: SinkHandle, statuses: CampaignStatuses
) -> None:
    """Issue 11, item 7: the status is looked at before rendering, so cancelling a campaign
    whose template is slow stops its batches at once (500 renders of 100 ms otherwise)."""
    campaign = await new_campaign(pool, "cancelled")
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    batch = make_batch(campaign, await insert_content(pool, campaign, html=slow), 0, 500)
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        result = await dispatcher(pool, sink, session, statuses).dispatch(batch)
    assert time.monotonic() - started < 10
    assert {o.status for o in result.outcomes} == {"cancelled"}
    assert received(sink, campaign) == 0


async def test_a_pause_committed_before_the_claim_stops_the_batch_whatever_the_cache_says(
    pool: asyncpg.Pool, sink: SinkHandle
) -> None:
    """The last look before the claim is the database's: with the cache a refresh behind
    (on a loaded host), a batch claimed after the pause mailed addresses that were
    unsubscribed during the pause (seen in the chaos test)."""
    stale = CampaignStatuses(pool, refresh_s=3600)  # never refreshed while the test runs
    campaign = await new_campaign(pool, "in_progress")
    first, second = await batches(pool, campaign, 2, 5)
    async with aiohttp.ClientSession() as session:
        d = dispatcher(pool, sink, session, stale)
        await d.dispatch(first)  # the cache now says in_progress
        await set_status(pool, campaign, "paused")
        assert stale.latest(campaign) == "in_progress"
        with pytest.raises(HandedBack) as handed:
            await d.dispatch(second)
    assert handed.value.reason == "paused"
    assert received(sink, campaign) == 5 and await ledger_rows(pool, campaign) == 1
