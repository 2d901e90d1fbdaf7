"""The send ledger against real PostgreSQL and the sink: nothing is ever sent twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import asyncpg
import pytest

from libs.common.events import DeliveryResult, RecipientOutcome
from libs.mail.headers import HeaderPolicy
from libs.mail.providers.sendgrid import RetryPolicy, SendGridProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.sink import SinkHandle, start_sink
from services.dispatcher.content_store import ContentRepository
from services.dispatcher.dispatch import BatchDispatcher, HandedBack
from services.dispatcher.ledger import DeliveryMode
from services.dispatcher.ledger_store import PostgresLedger
from services.dispatcher.tests.support import insert_content, make_batch


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def dispatcher(
    pool: asyncpg.Pool,
    sink: SinkHandle,
    session: aiohttp.ClientSession,
    *,
    mode: DeliveryMode = "at_most_once",
    owner: str = "test-owner",
    lease_s: float = 30.0,
    concurrency: int = 4,
) -> BatchDispatcher:
    provider = SendGridProvider(
        "sink",
        sink.url,
        "k",
        session,
        concurrency=concurrency,
        limiter=RateLimiter(0),
        retry=RetryPolicy(3, 0.01, 0.05),
    )
    return BatchDispatcher(
        content=ContentRepository(pool),
        ledger=PostgresLedger(pool),
        providers={"sink": provider},
        headers=HeaderPolicy("http://api", "k"),
        owner=owner,
        mode=mode,
        lease_s=lease_s,
    )


async def test_a_done_batch_is_replayed_and_never_sent_again(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 50)
    d = dispatcher(pool, sink, session)
    first = await d.dispatch(batch)
    assert not first.replayed and {o.status for o in first.outcomes} == {"sent"}
    again = await d.dispatch(batch.model_copy(update={"emitted": 2}))
    assert again.replayed and again.outcomes == first.outcomes
    assert sink.stats()["messages"] == 50
    state = await pool.fetchval("SELECT state FROM send_ledger WHERE batch_id = $1", batch.batch_id)
    assert state == "done"


async def test_concurrent_copies_of_a_batch_send_it_once(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 20)
    d = dispatcher(pool, sink, session)
    results = await asyncio.gather(d.dispatch(batch), d.dispatch(batch), d.dispatch(batch))
    assert sorted(r.replayed for r in results) == [False, True, True]
    assert sink.stats()["messages"] == 20 and sink.stats()["duplicates"] == 0


async def claim_as_dead_dispatcher(
    pool: asyncpg.Pool, batch_id: str, campaign: uuid.UUID, recorded: list[RecipientOutcome]
) -> None:
    ledger = PostgresLedger(pool)
    claim = await ledger.claim(batch_id, campaign, "dead-dispatcher", 30)
    assert claim is not None
    if recorded:
        assert await ledger.add_progress(claim, recorded)
    # Its lease ran out (by the database's clock) since it died.
    await pool.execute(
        "UPDATE send_ledger SET lease_until = now() - interval '1 second' WHERE batch_id = $1",
        batch_id,
    )


async def test_an_interrupted_send_reports_unknown_except_what_was_recorded(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 10)
    first = batch.recipients[0]
    recorded = RecipientOutcome(
        recipient_id=first.recipient_id, email=first.email, status="sent", message_id="m1"
    )
    await claim_as_dead_dispatcher(pool, batch.batch_id, campaign, [recorded])
    result = await dispatcher(pool, sink, session).dispatch(batch)
    assert result.outcomes[0] == recorded
    assert [o.status for o in result.outcomes[1:]] == ["unknown"] * 9
    assert sink.stats()["messages"] == 0
    # Settled for good: a later copy replays the same answer.
    assert (await dispatcher(pool, sink, session).dispatch(batch)).outcomes == result.outcomes


async def test_at_least_once_resends_only_what_was_not_recorded(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 10)
    first = batch.recipients[0]
    recorded = RecipientOutcome(recipient_id=first.recipient_id, email=first.email, status="sent")
    await claim_as_dead_dispatcher(pool, batch.batch_id, campaign, [recorded])
    result = await dispatcher(pool, sink, session, mode="at_least_once").dispatch(batch)
    assert [o.status for o in result.outcomes] == ["sent"] * 10
    assert first.email not in {m.email for m in sink.messages}
    assert sink.stats()["messages"] == 9


async def test_a_live_previous_owner_is_waited_for_then_its_result_replayed(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    campaign = uuid.uuid4()
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 5)
    ledger = PostgresLedger(pool)
    claim = await ledger.claim(batch.batch_id, campaign, "previous", 30)
    assert claim is not None
    waiting = asyncio.create_task(dispatcher(pool, sink, session).dispatch(batch))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    # The previous owner (still alive after a rebalance) finishes and stores its result.
    now = datetime.now(UTC)
    original = DeliveryResult(
        **batch.model_dump(
            include={
                "batch_id",
                "campaign_id",
                "batch_no",
                "batches_total",
                "audience_total",
                "suppressed_total",
                "provider",
            }
        ),
        outcomes=[
            RecipientOutcome(
                recipient_id=r.recipient_id, email=r.email, status="sent", message_id="prev"
            )
            for r in batch.recipients
        ],
        started_at=now,
        finished_at=now,
    )
    assert await ledger.finish(claim, original.model_dump(mode="json"))
    replayed = await asyncio.wait_for(waiting, 5)
    assert replayed.replayed and replayed.outcomes == original.outcomes
    assert sink.stats()["messages"] == 0


async def test_missing_content_and_unknown_provider_fail_with_a_reason(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    campaign = uuid.uuid4()
    missing = make_batch(campaign, uuid.uuid4(), 0, 2)
    result = await dispatcher(pool, sink, session).dispatch(missing)
    assert {o.status for o in result.outcomes} == {"failed"}
    assert "content snapshot" in (result.outcomes[0].error or "")
    unknown = make_batch(campaign, await insert_content(pool, campaign), 1, 2, provider="pigeon")
    result = await dispatcher(pool, sink, session).dispatch(unknown)
    assert "unknown provider 'pigeon'" in (result.outcomes[0].error or "")
    assert sink.stats()["messages"] == 0


async def test_a_batch_released_on_an_outage_sends_only_what_was_not_accepted(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    campaign = uuid.uuid4()
    # 1,200 recipients as individual messages would be many requests; a templated batch of
    # 1,200 is two requests: the first accepted, the second refused (a key revoked between).
    batch = make_batch(campaign, await insert_content(pool, campaign), 0, 1200)
    sink.inject_fault(202, count=1)
    sink.inject_fault(401, count=1)
    with pytest.raises(HandedBack) as handed:  # one request at a time: in order
        await dispatcher(pool, sink, session, concurrency=1).dispatch(batch)
    assert handed.value.reason == "outage" and "401" in handed.value.detail
    accepted = {m.email for m in sink.messages}
    assert len(accepted) == 1000
    # At-most-once still sends the rest: the refusal proved them unsent.
    result = await dispatcher(pool, sink, session, owner="next-owner").dispatch(batch)
    assert [o.status for o in result.outcomes] == ["sent"] * 1200
    assert sink.stats()["messages"] == 1200 and sink.stats()["duplicates"] == 0
