"""A batch whose domain group has no room waits, under its lease, and completes later (issue
14 item 4): real PostgreSQL, the sink provider over HTTP, short throttle windows."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client import REGISTRY

from libs.common.events import BatchReady, BatchRecipient, RecipientOutcome
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Outbox
from libs.mail.providers.base import ProgressCallback
from libs.mail.providers.sendgrid import RetryPolicy, SendGridProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.sink import SinkHandle, start_sink
from libs.mail.throttles import (
    GroupLimit,
    ThrottlePolicy,
    WarmupSchedule,
    group_counts,
    split_outbox,
)
from services.dispatcher.campaign_status import CampaignStatuses
from services.dispatcher.content_store import ContentRepository
from services.dispatcher.dispatch import BatchDispatcher, HandedBack
from services.dispatcher.ledger import Decision, decide
from services.dispatcher.ledger_store import PostgresLedger
from services.dispatcher.tests.support import insert_content, make_batch
from services.dispatcher.tests.test_control import new_campaign, set_status
from services.dispatcher.throttle_store import PostgresThrottles

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def until(condition: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> bool:
    """Poll `condition` until it holds (True) or `within_s` passed (False)."""
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def parked(pool: asyncpg.Pool, batch: BatchReady) -> bool:
    return await _has_row(pool, batch) and bool((await row(pool, batch))["parked"])


def with_emails(batch: BatchReady, emails: list[str]) -> BatchReady:
    recipients = [
        BatchRecipient(recipient_id=r.recipient_id, email=email, fields=r.fields)
        for r, email in zip(batch.recipients, emails, strict=True)
    ]
    return batch.model_copy(update={"recipients": recipients})


async def throttled_batch(
    pool: asyncpg.Pool, groups: dict[str, int], campaign: uuid.UUID | None = None
) -> BatchReady:
    campaign = campaign or uuid.uuid4()
    domains = {"gmail": "gmail.com", "yahoo": "yahoo.com", "microsoft": "outlook.com",
               "other": "example.com"}  # fmt: skip
    tag = campaign.hex[:8]
    emails = [f"r{i}.{tag}@{domains[g]}" for g, n in groups.items() for i in range(n)]
    content = await insert_content(pool, campaign)
    return with_emails(make_batch(campaign, content, 0, len(emails)), emails)


def throttles(pool: asyncpg.Pool, group: str, per_window: int, window_s: int) -> PostgresThrottles:
    """`per_window` a `window_s`-second "minute" for `group` on the sink. Each test throttles
    a group of its own (the windows live in the shared database)."""
    policy = ThrottlePolicy({("sink", group): GroupLimit(per_minute=per_window)})
    return PostgresThrottles(pool, policy, WarmupSchedule(), minute_s=window_s)


def dispatcher(
    pool: asyncpg.Pool,
    sink: SinkHandle,
    session: aiohttp.ClientSession,
    owner: str,
    limits: PostgresThrottles,
    **options: Any,
) -> BatchDispatcher:
    provider = SendGridProvider(
        "sink", sink.url, "k", session,
        concurrency=2, limiter=RateLimiter(0), retry=RetryPolicy(2, 0.01, 0.05),
    )  # fmt: skip
    return BatchDispatcher(
        content=ContentRepository(pool),
        ledger=PostgresLedger(pool),
        providers={"sink": provider},
        headers=HeaderPolicy("http://api", "k"),
        owner=owner,
        mode="at_most_once",
        lease_s=options.pop("lease_s", 1.0),
        throttles=limits,
        **options,
    )


def received(sink: SinkHandle, batch: BatchReady) -> dict[str, int]:
    emails = {r.email for r in batch.recipients}
    return {e: n for (_, e), n in sink.state.received.items() if e in emails}


def waiting(group: str) -> float:
    value = REGISTRY.get_sample_value(
        "mailfleet_dispatcher_throttle_waiting_batches", {"provider": "sink", "group": group}
    )
    return value or 0.0


async def row(pool: asyncpg.Pool, batch: BatchReady) -> asyncpg.Record:
    found = await pool.fetchrow(
        "SELECT state, claim, coalesce((result->>'released')::boolean, false) AS parked,"
        " lease_until > now() AS live FROM send_ledger WHERE batch_id = $1",
        batch.batch_id,
    )
    assert found is not None
    return found


async def test_a_batch_sends_what_has_room_and_the_rest_later_under_its_lease(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    batch = await throttled_batch(pool, {"gmail": 10, "other": 5})
    d = dispatcher(pool, sink, session, "me", throttles(pool, "gmail", 4, 1), lease_s=0.6)
    started = time.monotonic()
    task = asyncio.ensure_future(d.dispatch(batch))
    # The other group and the room of gmail go at once; the rest of gmail waits.
    while sum(received(sink, batch).values()) < 9:
        assert not task.done()
        await asyncio.sleep(0.01)
    seen_waiting = seen_parked_and_live = False
    while not task.done():
        if time.monotonic() - started > 0.8:  # past the first lease's end: it was renewed
            state = await row(pool, batch)
            seen_parked_and_live |= state["parked"] and state["live"] and state["claim"] == 1
        seen_waiting |= waiting("gmail") == 1
        await asyncio.sleep(0.02)
    result = await task
    assert [o.status for o in result.outcomes] == ["sent"] * 15
    assert set(received(sink, batch).values()) == {1} and len(received(sink, batch)) == 15
    # 4 a window: three windows at least, so two window ends were waited for.
    assert time.monotonic() - started > 1.0
    assert seen_waiting and waiting("gmail") == 0
    assert seen_parked_and_live
    final = await row(pool, batch)
    assert final["state"] == "done" and final["claim"] == 1  # never taken over


async def test_an_instance_dead_while_it_waits_leaves_the_rest_to_be_sent_not_unknown(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    """At most once: the recipients still waiting were never handed to a provider, so the
    next owner sends them (before the parked row, they ended `unknown`)."""
    batch = await throttled_batch(pool, {"yahoo": 8})
    limits = throttles(pool, "yahoo", 3, 1)
    first = asyncio.ensure_future(dispatcher(pool, sink, session, "a", limits).dispatch(batch))

    async def is_waiting() -> bool:
        return waiting("yahoo") == 1

    assert await until(is_waiting)
    await until(lambda: parked(pool, batch), 0.5)  # it parks as it starts to wait
    sent_by_a = sum(received(sink, batch).values())
    assert 1 <= sent_by_a < 8
    first.cancel()  # dies: it writes nothing more, its lease runs out
    with pytest.raises(asyncio.CancelledError):
        await first
    result = await dispatcher(pool, sink, session, "b", limits).dispatch(batch)
    assert [o.status for o in result.outcomes] == ["sent"] * 8
    assert set(received(sink, batch).values()) == {1} and len(received(sink, batch)) == 8
    assert (await row(pool, batch))["claim"] == 2  # taken over once its lease expired


async def _has_row(pool: asyncpg.Pool, batch: BatchReady) -> bool:
    found = await pool.fetchval("SELECT 1 FROM send_ledger WHERE batch_id = $1", batch.batch_id)
    return found is not None


async def test_a_wait_longer_than_one_handling_may_hands_the_batch_back_to_be_requeued(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    batch = await throttled_batch(pool, {"microsoft": 6})
    limits = throttles(pool, "microsoft", 2, 1)
    impatient = dispatcher(pool, sink, session, "a", limits, throttle_max_wait_s=0.3)
    with pytest.raises(HandedBack) as handed:
        await impatient.dispatch(batch)
    assert handed.value.reason == "throttled"
    state = await row(pool, batch)
    assert state["state"] == "sending" and state["parked"] and not state["live"]  # released
    sent_first = sum(received(sink, batch).values())
    assert 1 <= sent_first <= 4
    # Read again (the caller put it back on batch.ready): the rest goes, nobody twice.
    result = await dispatcher(pool, sink, session, "b", limits).dispatch(batch)
    assert [o.status for o in result.outcomes] == ["sent"] * 6
    assert set(received(sink, batch).values()) == {1} and len(received(sink, batch)) == 6


async def test_a_pause_or_a_stop_while_waiting_hands_the_batch_back_and_the_rest_goes_later(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    campaign = await new_campaign(pool)
    statuses = CampaignStatuses(pool, refresh_s=0.1)
    stop_statuses = asyncio.Event()
    follow = asyncio.create_task(statuses.run(stop_statuses))
    try:
        batch = await throttled_batch(pool, {"other": 12}, campaign)
        limits = throttles(pool, "other", 3, 1)
        d = dispatcher(pool, sink, session, "a", limits, gate=statuses)
        task = asyncio.ensure_future(d.dispatch(batch))
        assert await until(lambda: parked(pool, batch))
        paused_at = time.monotonic()
        await set_status(pool, campaign, "paused")
        with pytest.raises(HandedBack) as handed:
            await task
        assert handed.value.reason == "paused"
        assert time.monotonic() - paused_at < 2.0
        sent = sum(received(sink, batch).values())
        assert 1 <= sent < 12
        # Resumed: the re-emitted batch is read by an instance that is told to stop while
        # it waits: handed back `stopping` (its offset stays uncommitted).
        await set_status(pool, campaign, "in_progress")
        stopping = False
        s = dispatcher(pool, sink, session, "b", limits, gate=statuses, stopping=lambda: stopping)
        task = asyncio.ensure_future(s.dispatch(batch))

        async def sent_more() -> bool:
            return sum(received(sink, batch).values()) > sent

        assert await until(sent_more)
        stopping = True
        with pytest.raises(HandedBack) as handed:
            await task
        assert handed.value.reason == "stopping"
        # The partition's next owner sends the rest.
        result = await dispatcher(pool, sink, session, "c", limits, gate=statuses).dispatch(batch)
        assert [o.status for o in result.outcomes] == ["sent"] * 12
        assert set(received(sink, batch).values()) == {1} and len(received(sink, batch)) == 12
    finally:
        stop_statuses.set()
        await follow


async def test_a_parked_row_holds_every_outcome_seen_and_is_waited_for_while_its_lease_lives(
    pool: asyncpg.Pool,
) -> None:
    ledger = PostgresLedger(pool)
    campaign = uuid.uuid4()
    batch_id = f"{campaign}:0"
    claim = await ledger.claim(batch_id, campaign, "a", 30)
    assert claim is not None

    def sent(*ids: int) -> list[RecipientOutcome]:
        return [RecipientOutcome(recipient_id=i, email=f"{i}@x.org", status="sent") for i in ids]

    # Progress a database blink kept in memory (never written) is written with the parking.
    assert await ledger.add_progress(claim, sent(1))
    assert await ledger.park(claim, sent(1, 2, 3))
    entry = await ledger.get(batch_id)
    assert entry is not None and entry.released and not entry.lease_expired
    assert sorted(o.recipient_id for o in entry.recorded_outcomes()) == [1, 2, 3]
    # Another instance waits for the live owner; once the lease ran out it sends the rest.
    assert decide(entry, me="b", mode="at_most_once") is Decision.WAIT
    assert decide(entry, me="a", mode="at_most_once") is Decision.RESEND
    expired = replace(entry, lease_expired=True)
    assert decide(expired, me="b", mode="at_most_once") is Decision.RESEND
    # Unparked before the next send: from then on, what is not recorded may have gone out.
    assert await ledger.unpark(claim)
    entry = await ledger.get(batch_id)
    assert entry is not None and not entry.released
    assert decide(replace(entry, lease_expired=True), me="b", mode="at_most_once") is (
        Decision.UNKNOWN
    )
    # A lost claim can neither park nor unpark.
    await pool.execute(
        "UPDATE send_ledger SET lease_until = now() - interval '1 second' WHERE batch_id = $1",
        batch_id,
    )
    taken = await ledger.take_over(claim, "b", 30)
    assert taken is not None
    assert not await ledger.park(claim, sent(4)) and not await ledger.unpark(claim)


class RaisingOnSecondSend:
    """The sink's SendGrid provider, whose second send delivers one recipient, then raises."""

    def __init__(self, inner: SendGridProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.limiter = inner.limiter
        self.breaker = inner.breaker
        self.sends = 0

    async def send(self, outbox: Outbox, on_progress: ProgressCallback) -> list[RecipientOutcome]:
        self.sends += 1
        if self.sends != 2:
            return await self.inner.send(outbox, on_progress)
        one, _ = split_outbox(outbox, dict.fromkeys(group_counts(outbox), 1))
        await self.inner.send(one, on_progress)
        raise RuntimeError("boom in the middle of a throttled batch")

    async def close(self) -> None:
        await self.inner.close()


async def test_a_send_that_raises_hands_the_waiting_rest_back_instead_of_calling_it_unknown(
    pool: asyncpg.Pool, sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    batch = await throttled_batch(pool, {"gmail": 9})
    limits = throttles(pool, "gmail", 3, 1)
    first = dispatcher(pool, sink, session, "a", limits)
    first._providers = {"sink": RaisingOnSecondSend(first._providers["sink"])}  # type: ignore[dict-item,arg-type]
    with pytest.raises(HandedBack) as handed:
        await first.dispatch(batch)
    assert handed.value.reason == "throttled"
    assert sum(received(sink, batch).values()) == 4  # 3, then 1 before the error
    result = await dispatcher(pool, sink, session, "b", limits).dispatch(batch)
    statuses = Counter(o.status for o in result.outcomes)
    # The two the raising send was asked for are unknown; the three still waiting were sent.
    assert statuses == {"sent": 7, "unknown": 2}, statuses
    assert set(received(sink, batch).values()) == {1} and len(received(sink, batch)) == 7
