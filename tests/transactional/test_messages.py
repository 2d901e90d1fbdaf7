"""Transactional messages end to end, in process: the API, a dispatcher and a tracker on a
broker of their own, real PostgreSQL, the sink. What each test proves is in its name."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from conftest import make_settings
from libs.common.embedded import EmbeddedBroker
from libs.common.events import (
    ContactEvent,
    DeliveryEvent,
    DeliveryResult,
    MessageRequested,
    Topic,
)
from libs.common.idempotency import accept
from libs.common.kafka import EventProducer, ensure_topics
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from libs.common.suppressions import add_suppression, erased_token, erasure_key
from libs.mail.config import DispatcherSettings
from libs.mail.sink import SinkHandle, SinkMessage, start_sink
from services.api.app import create_app
from services.api.tests.support import running
from services.dispatcher import app as dispatcher_app
from services.tracker import app as tracker_app

pytestmark = pytest.mark.timeout(120)

INLINE = {
    "subject": "Receipt {{ order }}",
    "html": "<p>Thanks {{ name }}, order {{ order }}</p>",
    "from_email": "shop@example.com",
}


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = EmbeddedBroker(log_path=Path(tmp_path_factory.mktemp("tx-broker")) / "tansu.log")
    yield broker.start()
    broker.stop()


@pytest.fixture(scope="module")
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


@pytest.fixture(scope="module")
async def tx_settings(database_url: str, private_broker: str, sink: SinkHandle) -> Settings:
    s = make_settings(
        database_url, private_broker, sink_url=sink.url,
        bootstrap_api_key=f"mf_test_admin_{uuid.uuid4().hex}",
        kafka_session_timeout_ms=6000, kafka_heartbeat_interval_ms=1000,
    )  # fmt: skip
    await ensure_topics(s)
    return s


class Results:
    """Every message result read from `delivery.result`, by message id."""

    def __init__(self) -> None:
        self.by_message: dict[uuid.UUID, list[DeliveryResult]] = {}


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    """Poll a condition kept elsewhere (a remote status) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def results(tx_settings: Settings) -> AsyncIterator[Results]:
    consumer = AIOKafkaConsumer(
        Topic.DELIVERY_RESULT.value, bootstrap_servers=tx_settings.kafka_bootstrap_servers,
        group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=20,
    )  # fmt: skip
    await consumer.start()
    found = Results()

    async def read() -> None:
        async for record in consumer:
            result = DeliveryResult.model_validate_json(record.value or b"")
            if result.message_id is not None:
                found.by_message.setdefault(result.message_id, []).append(result)

    task = asyncio.create_task(read())
    yield found
    task.cancel()
    await consumer.stop()


@pytest.fixture(scope="module")
async def stack(
    tx_settings: Settings, pool: asyncpg.Pool, results: Results
) -> AsyncIterator[httpx.AsyncClient]:
    producer = EventProducer(tx_settings)
    await producer.start()
    stop = asyncio.Event()
    group = f"tx-{uuid.uuid4().hex[:8]}"
    extra = DispatcherSettings(MAILFLEET_LEDGER_LEASE_S=5)
    tasks = [
        asyncio.create_task(
            dispatcher_app.main(
                ServiceContext("dispatcher", tx_settings, pool, producer, stop),
                group_id=group, extra=extra, instance_id=f"{group}-1",
            )
        ),
        asyncio.create_task(
            tracker_app.main(
                ServiceContext("tracker", tx_settings, pool, producer, stop),
                group_id=f"{group}-tracker",
            )
        ),
    ]  # fmt: skip
    async with running(create_app(tx_settings)) as client:
        client.headers["Authorization"] = f"Bearer {tx_settings.bootstrap_api_key}"
        yield client
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    await producer.stop()


def mails_of(sink: SinkHandle, message_id: str) -> list[SinkMessage]:
    return [m for m in sink.messages if m.custom_args.get("campaign_id") == message_id]


async def final(client: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (await client.get(f"/api/v1/messages/{message_id}")).json()
        return body if body["status"] != "queued" else None

    result: dict[str, Any] = await wait_until(done)
    return result


def address() -> str:
    return f"p{uuid.uuid4().hex[:10]}@example.org"


async def test_the_same_key_sent_five_times_produces_one_mail(
    stack: httpx.AsyncClient, sink: SinkHandle, results: Results
) -> None:
    body = {"to": address(), "content": INLINE, "data": {"name": "Ada", "order": 42}}
    key = {"Idempotency-Key": f"order-42-{uuid.uuid4()}"}
    answers = [await stack.post("/api/v1/messages", json=body, headers=key) for _ in range(5)]
    assert [a.status_code for a in answers] == [202, 200, 200, 200, 200], answers[0].text
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    message_id = ids.pop()
    shown = await final(stack, message_id)
    assert shown["status"] == "sent" and shown["to"] == body["to"]
    # Each of the five publications was handled: one send, four replays from the ledger.
    handled = await wait_until(lambda: _ready(results.by_message.get(uuid.UUID(message_id), []), 5))
    assert sum(not r.replayed for r in handled) == 1
    mails = mails_of(sink, message_id)
    assert len(mails) == 1
    assert mails[0].subject == "Receipt 42" and "Thanks Ada" in mails[0].html


async def _ready(items: list[DeliveryResult], n: int) -> list[DeliveryResult] | None:
    return items if len(items) >= n else None


async def test_the_same_key_with_another_body_is_409(stack: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    body = {"to": address(), "content": INLINE, "data": {"name": "A", "order": 1}}
    first = await stack.post("/api/v1/messages", json=body, headers=key)
    assert first.status_code == 202
    other = await stack.post(
        "/api/v1/messages", json={**body, "data": {"name": "B", "order": 1}}, headers=key
    )
    assert other.status_code == 409, other.text
    assert other.headers["content-type"].startswith("application/problem+json")
    assert first.json()["id"] in other.json()["detail"]


async def test_an_essential_category_reaches_an_unsubscribed_address_a_marketing_one_not(
    stack: httpx.AsyncClient, sink: SinkHandle, pool: asyncpg.Pool
) -> None:
    to = address()
    assert await add_suppression(pool, to, "unsubscribe", "test")
    receipt = await stack.post(
        "/api/v1/messages",
        json={"to": to, "content": INLINE, "data": {"order": 7}, "category": "receipt"},
    )
    promo = await stack.post(
        "/api/v1/messages",
        json={"to": to, "content": INLINE, "data": {"order": 8}, "category": "newsletter"},
    )
    assert receipt.status_code == promo.status_code == 202
    sent = await final(stack, receipt.json()["id"])
    refused = await final(stack, promo.json()["id"])
    assert sent["status"] == "sent" and sent["essential"] is True
    assert refused["status"] == "suppressed" and refused["essential"] is False
    mails = mails_of(sink, receipt.json()["id"])
    assert len(mails) == 1 and not mails_of(sink, promo.json()["id"])
    # Nobody can opt out of a receipt: no List-Unsubscribe, no unsubscribe footer.
    assert "List-Unsubscribe" not in mails[0].headers
    assert "/u/" not in mails[0].html


async def test_a_marketing_message_carries_list_unsubscribe(
    stack: httpx.AsyncClient, sink: SinkHandle
) -> None:
    answer = await stack.post(
        "/api/v1/messages", json={"to": address(), "content": INLINE, "category": "promo"}
    )
    shown = await final(stack, answer.json()["id"])
    assert shown["status"] == "sent"
    (mail,) = mails_of(sink, shown["id"])
    assert mail.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/u/" in mail.headers["List-Unsubscribe"] and "/u/" in mail.html


@pytest.mark.parametrize("reason", ["bounce", "spamreport"])
async def test_a_hard_bounced_or_complaining_address_is_refused_even_for_essential(
    stack: httpx.AsyncClient, sink: SinkHandle, pool: asyncpg.Pool, reason: str
) -> None:
    to = address()
    assert await add_suppression(pool, to, reason, "test")
    answer = await stack.post(
        "/api/v1/messages",
        json={"to": to, "content": INLINE, "category": "password_reset"},
    )
    shown = await final(stack, answer.json()["id"])
    assert shown["status"] == "suppressed"
    assert not mails_of(sink, shown["id"])


async def test_message_requested_from_a_producer_is_sent_once_per_key(
    stack: httpx.AsyncClient, sink: SinkHandle, tx_settings: Settings, results: Results
) -> None:
    producer = EventProducer(tx_settings)
    await producer.start()
    try:
        to = address()
        key = f"evt-{uuid.uuid4()}"
        event = MessageRequested(
            to=to, idempotency_key=key, content=INLINE, data={"order": 9},  # type: ignore[arg-type]
            category="receipt", requested_at=datetime.now(UTC),
        )  # fmt: skip
        await producer.send(Topic.MESSAGE_REQUESTED, to, event)
        await producer.send(Topic.MESSAGE_REQUESTED, to, event)  # a redelivery, say
        other = event.model_copy(update={"data": {"order": 10}})
        await producer.send(Topic.MESSAGE_REQUESTED, to, other)  # the key reused: refused
        await producer.send(Topic.MESSAGE_REQUESTED, to, event.model_copy(update={"to": "x"}))
        mine = await wait_until(
            lambda: _ready([m for m in sink.messages if m.email == to], 1)  # type: ignore[arg-type]
        )
        message_id = mine[0].custom_args["campaign_id"]
        shown = await final(stack, message_id)
        assert shown["status"] == "sent" and shown["category"] == "receipt"
        assert mine[0].subject == "Receipt 9"
        dead = await _dead_letters(tx_settings, 2)
        reasons = " ".join(d[1] for d in dead)
        assert "idempotency key" in reasons and "to" in reasons
        await wait_until(lambda: _ready(results.by_message.get(uuid.UUID(message_id), []), 2))
        assert len([m for m in sink.messages if m.email == to]) == 1
    finally:
        await producer.stop()


async def _dead_letters(settings: Settings, n: int) -> list[tuple[bytes, str]]:
    consumer = AIOKafkaConsumer(
        Topic.MESSAGE_REQUESTED.dlq, bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=20,
    )  # fmt: skip
    await consumer.start()
    found: list[tuple[bytes, str]] = []
    try:
        deadline = time.monotonic() + 30
        while len(found) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    reason = dict(r.headers).get("reason", b"").decode()
                    found.append((r.value or b"", reason))
        return found
    finally:
        await consumer.stop()


async def test_get_shows_the_status_and_the_provider_events(
    stack: httpx.AsyncClient, tx_settings: Settings
) -> None:
    answer = await stack.post(
        "/api/v1/messages", json={"to": address(), "content": INLINE, "category": "receipt"}
    )
    message_id = answer.json()["id"]
    assert answer.json()["status"] == "queued"
    shown = await final(stack, message_id)
    assert shown["status"] == "sent" and shown["provider"] == "sink"
    assert shown["provider_message_id"] and shown["sent_at"] and shown["events"] == []
    producer = EventProducer(tx_settings)
    await producer.start()
    try:
        for kind in ("processed", "delivered"):
            await producer.send(
                Topic.DELIVERY_EVENT, message_id,
                DeliveryEvent(
                    event_id=f"{message_id}-{kind}", campaign_id=uuid.UUID(message_id),
                    recipient_id=0, email=shown["to"], event=kind, provider="sink",  # type: ignore[arg-type]
                    occurred_at=datetime.now(UTC),
                ),
            )  # fmt: skip
    finally:
        await producer.stop()

    async def with_events() -> dict[str, Any] | None:
        body: dict[str, Any] = (await stack.get(f"/api/v1/messages/{message_id}")).json()
        return body if len(body["events"]) == 2 else None

    body = await wait_until(with_events)
    assert [e["event"] for e in body["events"]] == ["processed", "delivered"]
    assert body["delivery"] == "delivered"
    missing = await stack.get(f"/api/v1/messages/{uuid.uuid4()}")
    assert missing.status_code == 404


async def test_a_template_version_is_sent_with_its_own_content(
    stack: httpx.AsyncClient, sink: SinkHandle
) -> None:
    created = await stack.post(
        "/api/v1/templates",
        json={"name": "reset", "subject": "Reset v1 {{ name }}", "html": "<p>v1</p>"},
    )
    assert created.status_code == 201, created.text
    template = created.json()["id"]
    updated = await stack.patch(
        f"/api/v1/templates/{template}", json={"subject": "Reset v2 {{ name }}"}
    )
    assert updated.status_code == 200, updated.text
    sent = Counter[str]()
    for version in (1, None):
        body: dict[str, Any] = {
            "to": address(), "template_id": template, "from_email": "it@example.com",
            "data": {"name": "Bo"}, "category": "password_reset",
        }  # fmt: skip
        if version:
            body["template_version"] = version
        answer = await stack.post("/api/v1/messages", json=body)
        assert answer.status_code == 202, answer.text
        shown = await final(stack, answer.json()["id"])
        (mail,) = mails_of(sink, shown["id"])
        sent[mail.subject] += 1
    assert sent == Counter({"Reset v1 Bo": 1, "Reset v2 Bo": 1})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": INLINE}, "body.to"),
        ({"to": "not-an-address", "content": INLINE}, "body.to"),
        ({"to": "a@example.org"}, "body.content"),
        (
            {
                "to": "a@example.org",
                "content": INLINE,
                "template_id": str(uuid.uuid4()),
                "from_email": "s@example.org",
            },
            "body.content",
        ),  # fmt: skip
        (
            {
                "to": "a@example.org",
                "template_id": str(uuid.uuid4()),
                "from_email": "s@example.org",
            },
            "body.template_id",
        ),  # fmt: skip
        ({"to": "a@example.org", "content": INLINE, "category": "Bad Category!"}, "body.category"),
        ({"to": "a@example.org", "content": {**INLINE, "subject": "a\nb"}}, "body.content.subject"),
        ({"to": "a@example.org", "content": INLINE, "data": {"x": "y" * 40_000}}, "body.data"),
        ({"to": "a@example.org", "content": {**INLINE, "html": "{% if %}"}}, "body.html"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    stack: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    answer = await stack.post("/api/v1/messages", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in answer.json()["errors"]], answer.text


async def test_a_too_long_idempotency_key_is_422(stack: httpx.AsyncClient) -> None:
    answer = await stack.post(
        "/api/v1/messages",
        json={"to": address(), "content": INLINE},
        headers={"Idempotency-Key": "k" * 300},
    )
    assert answer.status_code == 422
    assert any("idempotency" in e["field"].lower() for e in answer.json()["errors"])


async def test_an_unsubscribe_from_a_marketing_message_suppresses_the_address(
    stack: httpx.AsyncClient, sink: SinkHandle, tx_settings: Settings
) -> None:
    to = address()
    first = await final(
        stack,
        (await stack.post("/api/v1/messages", json={"to": to, "content": INLINE})).json()["id"],
    )
    assert first["status"] == "sent"
    # What the edge publishes for a click on the message's signed unsubscribe link.
    producer = EventProducer(tx_settings)
    await producer.start()
    try:
        await producer.send(
            Topic.CONTACT_EVENT, first["id"],
            ContactEvent(
                event_id=f"unsub-{first['id']}", action="unsubscribe",
                campaign_id=uuid.UUID(first["id"]), recipient_id=0,
                occurred_at=datetime.now(UTC), source="one-click",
            ),
        )  # fmt: skip
    finally:
        await producer.stop()

    async def refused() -> dict[str, Any] | None:
        answer = await stack.post("/api/v1/messages", json={"to": to, "content": INLINE})
        shown = await final(stack, answer.json()["id"])
        return shown if shown["status"] == "suppressed" else None

    assert await wait_until(refused)
    assert len([m for m in sink.messages if m.email == to]) >= 1


async def test_a_key_is_free_again_after_24_hours(pool: asyncpg.Pool) -> None:
    key = f"old-{uuid.uuid4()}"
    first, second = uuid.uuid4(), uuid.uuid4()
    kwargs: dict[str, Any] = {"key": key, "recipient": "a@example.org", "category": None}
    made = await accept(pool, message_id=first, digest=b"a", source="api", **kwargs)
    assert made.outcome == "new"
    clash = await accept(pool, message_id=second, digest=b"b", source="api", **kwargs)
    assert (clash.outcome, clash.message_id) == ("conflict", first)
    await pool.execute(
        "UPDATE message_requests SET created_at = now() - interval '25 hours'"
        " WHERE message_id = $1",
        first,
    )
    again = await accept(pool, message_id=second, digest=b"b", source="api", **kwargs)
    assert (again.outcome, again.message_id) == ("new", second)


async def test_an_erased_person_is_never_mailed_even_essential(
    stack: httpx.AsyncClient, sink: SinkHandle, pool: asyncpg.Pool, tx_settings: Settings
) -> None:
    to = address()
    # What an erasure leaves: only the keyed token of the address (migration 0024).
    token = await erased_token(pool, to, erasure_key(tx_settings.secret_key))
    assert await add_suppression(pool, token, "erased", "test")
    answer = await stack.post(
        "/api/v1/messages", json={"to": to, "content": INLINE, "category": "receipt"}
    )
    shown = await final(stack, answer.json()["id"])
    assert shown["status"] == "suppressed"
    assert not mails_of(sink, shown["id"])
