"""Subscriptions folded by the importer: double and single opt-in, the hourly cap on
confirmations, consent records, leaving, joining again and preferences. Real PostgreSQL;
the last test goes through the service's loop on the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from conftest import first_events
from libs.common.confirm_token import read_confirm_token
from libs.common.events import ContactEvent, MessageRequested, Topic
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.importer.app import main
from services.importer.subscriptions import Outgoing, Subscriptions

SECRET = "test-secret"
T0 = datetime(2030, 5, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def subs(pool: asyncpg.Pool) -> Subscriptions:
    return Subscriptions(
        pool, secret_key=SECRET, public_base_url="https://edge.example", erasure_key=None
    )


async def new_list(pool: asyncpg.Pool, opt_in: str = "double", **extra: Any) -> uuid.UUID:
    list_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO lists (id, name, opt_in, confirmation_from_email, editable_fields,"
        " consent_text, consent_text_version) VALUES ($1, 'News <weekly>', $2,"
        " 'news@example.com', $3, 'I agree', 4)",
        list_id,
        opt_in,
        extra.get("editable_fields", ["first_name"]),
    )
    return list_id


def address() -> str:
    return f"p-{uuid.uuid4().hex[:10]}@example.com"


def subscribed(list_id: uuid.UUID, email: str, **data: Any) -> ContactEvent:
    return ContactEvent(
        event_id=f"subscribe:{uuid.uuid4()}",
        action="subscribed",
        email=email,
        list_id=list_id,
        data={"ip": "203.0.113.9", "user_agent": "Firefox"} | data,
        occurred_at=T0,
        source="form",
    )


def contact(action: str, list_id: uuid.UUID, email: str, **data: Any) -> ContactEvent:
    return ContactEvent(
        event_id=f"{action}:{uuid.uuid4()}",
        action=action,  # type: ignore[arg-type]
        email=email,
        list_id=list_id,
        data=data,
        occurred_at=T0,
        source="confirmation" if action == "confirmed" else "preferences",
    )


async def recipient(pool: asyncpg.Pool, list_id: uuid.UUID, email: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT status, fields FROM recipients WHERE list_id = $1 AND email = $2", list_id, email
    )


async def consents(pool: asyncpg.Pool, email: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM consents WHERE email = $1 ORDER BY id", email)


async def test_double_opt_in_sends_one_signed_confirmation_and_waits(
    subs: Subscriptions, pool: asyncpg.Pool
) -> None:
    list_id, email = await new_list(pool), address()
    out = await subs.handle(subscribed(list_id, email, fields={"first_name": "Ann"}), now=T0)

    assert out.contacts == []  # not a member yet: no `joined`
    [message] = out.messages
    assert message.to == email and message.category == "confirmation" and not message.track
    assert message.content is not None and message.content.from_email == "news@example.com"
    url = message.data["confirm_url"]
    assert url.startswith("https://edge.example/confirm/")
    target = read_confirm_token(SECRET, url.rsplit("/", 1)[1], now=T0)
    assert (target.list_id, target.email) == (list_id, email)
    row = await recipient(pool, list_id, email)
    assert row is not None and row["status"] == "unconfirmed"
    assert row["fields"] == {"first_name": "Ann"}
    [consent] = await consents(pool, email)
    assert consent["status"] == "pending" and consent["basis"] == "consent"
    assert (consent["ip"], consent["user_agent"], consent["source"]) == (
        "203.0.113.9",
        "Firefox",
        "form",
    )
    assert consent["consent_text_version"] == 4 and consent["given_at"] == T0


def _capped() -> float:
    labels = {"action": "subscribed", "outcome": "capped"}
    return REGISTRY.get_sample_value("mailfleet_subscriptions_total", labels) or 0.0


async def test_at_most_one_confirmation_per_address_per_hour(
    subs: Subscriptions, pool: asyncpg.Pool
) -> None:
    first_list, other_list, email = await new_list(pool), await new_list(pool), address()
    assert len((await subs.handle(subscribed(first_list, email), now=T0)).messages) == 1
    capped_before = _capped()
    # Again, and on another list, within the hour: recorded, nothing sent.
    later = T0 + timedelta(minutes=59)
    assert (await subs.handle(subscribed(first_list, email), now=later)).messages == []
    assert (await subs.handle(subscribed(other_list, email), now=later)).messages == []
    assert _capped() == capped_before + 2
    assert len(await consents(pool, email)) == 3
    # An hour after the first one: sent again.
    again = await subs.handle(subscribed(first_list, email), now=T0 + timedelta(hours=1))
    assert len(again.messages) == 1


async def test_a_replayed_subscription_publishes_the_same_confirmation_again(
    subs: Subscriptions, pool: asyncpg.Pool
) -> None:
    list_id, email = await new_list(pool), address()
    event = subscribed(list_id, email)
    first = await subs.handle(event, now=T0)
    replay = await subs.handle(event, now=T0 + timedelta(minutes=5))
    assert [m.idempotency_key for m in replay.messages] == [first.messages[0].idempotency_key]
    assert replay.messages[0].data == first.messages[0].data
    assert len(await consents(pool, email)) == 1


async def test_confirmation_activates_and_publishes_joined_once(
    subs: Subscriptions, pool: asyncpg.Pool
) -> None:
    list_id, email = await new_list(pool), address()
    await subs.handle(subscribed(list_id, email), now=T0)
    confirmed = contact("confirmed", list_id, email)
    out = await subs.handle(confirmed, now=T0 + timedelta(days=1))

    [joined] = out.contacts
    assert (joined.action, joined.email, joined.list_id, joined.source) == (
        "joined",
        email,
        list_id,
        "confirmation",
    )
    row = await recipient(pool, list_id, email)
    assert row is not None and row["status"] == "active"
    [consent] = await consents(pool, email)
    assert consent["status"] == "confirmed" and consent["confirmed_at"] is not None
    # The link followed twice: nothing more. The same event replayed: the same `joined`.
    assert await subs.handle(contact("confirmed", list_id, email)) == Outgoing()
    replay = await subs.handle(confirmed, now=T0 + timedelta(days=2))
    assert replay.contacts == [joined]


async def test_single_opt_in_joins_at_once_and_a_stranger_cannot_rename_a_member(
    subs: Subscriptions, pool: asyncpg.Pool
) -> None:
    list_id, email = await new_list(pool, "single"), address()
    first = subscribed(list_id, email, fields={"first_name": "Ann"})
    out = await subs.handle(first, now=T0)
    assert out.messages == []
    [joined] = out.contacts
    assert (joined.action, joined.source) == ("joined", "form")
    again = subscribed(list_id, email, fields={"first_name": "Mallory"})
    assert await subs.handle(again) == Outgoing()
    row = await recipient(pool, list_id, email)
    assert row is not None and row["status"] == "active"
    assert row["fields"] == {"first_name": "Ann"}
    assert [c["status"] for c in await consents(pool, email)] == ["given", "given"]
    # Replays: the first subscription publishes its `joined` again; the later one, made by
    # someone already a member, nothing (no second welcome).
    assert (await subs.handle(first)).contacts == [joined]
    assert await subs.handle(again) == Outgoing()


async def test_a_suppressed_address_is_recorded_and_nothing_else(
    subs: Subscriptions, pool: asyncpg.Pool
) -> None:
    list_id, email = await new_list(pool), address()
    await pool.execute("INSERT INTO suppressions (email, reason) VALUES ($1, 'bounce')", email)
    assert await subs.handle(subscribed(list_id, email), now=T0) == Outgoing()
    assert await recipient(pool, list_id, email) is None
    assert [c["status"] for c in await consents(pool, email)] == ["refused"]


async def test_leave_join_again_with_fresh_confirmation_and_edit_fields(
    subs: Subscriptions, pool: asyncpg.Pool
) -> None:
    list_id, email = await new_list(pool), address()
    await subs.handle(subscribed(list_id, email), now=T0)
    await subs.handle(contact("confirmed", list_id, email), now=T0)

    await subs.handle(contact("preferences", list_id, email, fields={"first_name": "Bo", "x": 1}))
    row = await recipient(pool, list_id, email)
    assert row is not None and row["fields"] == {"first_name": "Bo"}  # `x` is not editable

    await subs.handle(contact("left", list_id, email), now=T0 + timedelta(hours=2))
    row = await recipient(pool, list_id, email)
    assert row is not None and row["status"] == "unsubscribed"
    assert (await consents(pool, email))[0]["status"] == "withdrawn"

    rejoin = subscribed(list_id, email)
    out = await subs.handle(
        rejoin.model_copy(update={"source": "preferences"}), T0 + timedelta(hours=3)
    )
    assert len(out.messages) == 1  # a fresh confirmation
    row = await recipient(pool, list_id, email)
    assert row is not None and row["status"] == "unconfirmed"


@pytest.fixture
async def service(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[EventProducer]:
    producer = EventProducer(settings)
    await producer.start()
    ctx = ServiceContext("importer", settings, pool, producer, asyncio.Event())
    task = asyncio.create_task(main(ctx, group_id=f"importer-subs-{uuid.uuid4().hex[:8]}"))
    try:
        yield producer
    finally:
        ctx.stop.set()
        await asyncio.wait_for(task, 20)
        await producer.stop()


async def test_the_service_sends_the_confirmation_and_publishes_joined(
    service: EventProducer, settings: Settings, pool: asyncpg.Pool
) -> None:
    list_id, email = await new_list(pool), address()
    await service.send(Topic.CONTACT_EVENT, email, subscribed(list_id, email))
    [message] = await first_events(
        settings.kafka_bootstrap_servers, Topic.MESSAGE_REQUESTED, MessageRequested,
        lambda m: m.to == email,
    )  # fmt: skip
    token = message.data["confirm_url"].rsplit("/", 1)[1]
    assert read_confirm_token(SECRET, token).email == email
    await service.send(Topic.CONTACT_EVENT, email, contact("confirmed", list_id, email))
    [joined] = await first_events(
        settings.kafka_bootstrap_servers, Topic.CONTACT_EVENT, ContactEvent,
        lambda e: e.action == "joined" and e.email == email,
    )  # fmt: skip
    assert joined.list_id == list_id and joined.source == "confirmation"
    row = await recipient(pool, list_id, email)
    assert row is not None and row["status"] == "active"


async def test_an_unconfirmed_row_takes_the_latest_forms_fields(
    subs: Subscriptions, pool: asyncpg.Pool
) -> None:
    list_id, email = await new_list(pool), address()
    await subs.handle(subscribed(list_id, email, fields={"first_name": "Prank"}), now=T0)
    await subs.handle(subscribed(list_id, email, fields={"first_name": "Ann"}), now=T0)
    row = await recipient(pool, list_id, email)
    assert row is not None and row["fields"] == {"first_name": "Ann"}
