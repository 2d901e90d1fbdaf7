"""The service as it runs: Kafka topics in, the PostgreSQL outbox, HTTPS out."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg

from libs.common.events import CampaignStatus, ContactEvent, DeliveryEvent, Topic
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.webhooks.app import main
from services.webhooks.tests.support import (
    Receiver,
    Tls,
    add_endpoint,
    log_rows,
    retire_endpoints,
    start_receiver,
    wait_for,
)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, pool: asyncpg.Pool, producer: EventProducer, group_id: str
) -> AsyncIterator[None]:
    ctx = ServiceContext("webhooks", settings, pool, producer, asyncio.Event())
    task = asyncio.create_task(main(ctx, group_id))
    try:
        yield
    finally:
        ctx.stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)


async def test_topics_to_signed_https_through_a_restart(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    producer = EventProducer(webhook_settings)
    await producer.start()
    receiver = Receiver()
    healthy = False
    receiver.answer = lambda body: 200 if healthy else 500
    runner = await start_receiver(receiver, tls)
    endpoint = await add_endpoint(
        pool,
        webhook_settings.secret_key,
        f"{receiver.url}/svc",
        ["campaign.status", "delivery.open", "delivery.click", "contact.unsubscribed"],
        receiver,
    )
    group = f"webhooks-test-{uuid.uuid4().hex[:8]}"
    campaign = uuid.uuid4()
    now = datetime.now(UTC)
    try:
        status = CampaignStatus(campaign_id=campaign, status="in_progress", at=now)
        opens = [
            DeliveryEvent(
                event_id=f"{campaign}-open-{n}",
                campaign_id=campaign,
                recipient_id=n,
                email=f"p{n}@example.com",
                event="open",
                provider="sink",
                occurred_at=now + timedelta(seconds=n),
            )
            for n in range(5)
        ]
        processed = opens[0].model_copy(update={"event_id": f"{campaign}-p", "event": "processed"})
        unsubscribe = ContactEvent(
            event_id=f"{campaign}-unsub",
            action="unsubscribe",
            campaign_id=campaign,
            recipient_id=3,
            occurred_at=now,
            source="one-click",
        )
        async with running_service(webhook_settings, pool, producer, group):
            await producer.send(Topic.CAMPAIGN_STATUS, str(campaign), status)
            await producer.send_many(
                Topic.DELIVERY_EVENT, [(str(campaign), e) for e in [*opens, processed]]
            )
            await producer.send(Topic.CONTACT_EVENT, str(campaign), unsubscribe)
            # In the outbox (and failing at the receiver) before the service stops.
            await wait_for(
                lambda: _count(pool, endpoint, campaign, 7), what="7 outbox rows", timeout=60
            )
        assert receiver.delivered() == []
        # The same records read again (a new group re-reads the topic): no new rows.
        healthy = True
        async with running_service(webhook_settings, pool, producer, f"{group}-again"):
            await wait_for(lambda: len(receiver.delivered({str(campaign)})) >= 7, what="deliveries")
        mine = receiver.delivered({str(campaign)})
        assert receiver.bad_signatures == []
        assert sorted(r.event_type for r in mine) == sorted(
            ["campaign.status", "contact.unsubscribed"] + ["delivery.open"] * 5
        )
        assert len({r.event_id for r in mine}) == 7  # each exactly once
        status_body = next(r.body for r in mine if r.event_type == "campaign.status")
        assert status_body["data"]["status"] == "in_progress"
        opened = [r.body["data"]["recipient_id"] for r in mine if r.event_type == "delivery.open"]
        assert opened == [0, 1, 2, 3, 4]  # one campaign: in the order published
        rows = [r for r in await log_rows(pool, endpoint) if r["order_key"] == str(campaign)]
        assert len(rows) == 7 and {r["status"] for r in rows} == {"delivered"}
    finally:
        await retire_endpoints(pool, [endpoint])
        await runner.cleanup()
        await producer.stop()


async def _count(pool: asyncpg.Pool, endpoint: uuid.UUID, campaign: uuid.UUID, want: int) -> bool:
    # Only this campaign's: a new consumer group also reads earlier tests' events.
    count = await pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND order_key = $2",
        endpoint,
        str(campaign),
    )
    return bool(count == want)
