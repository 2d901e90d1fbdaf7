"""Helpers of the tracker's tests: a tracker run as a task, campaigns, results, recounts."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from libs.common.events import (
    CampaignStatus,
    DeliveryResult,
    RecipientOutcome,
    RecipientStatus,
    Topic,
)
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.tracker.app import main


@contextlib.asynccontextmanager
async def running_tracker(
    settings: Settings,
    pool: asyncpg.Pool,
    producer: EventProducer,
    group_id: str | None = None,
) -> AsyncIterator[asyncio.Task[None]]:
    """The tracker's `main` as a task, stopped the way run_service stops it."""
    ctx = ServiceContext("tracker", settings, pool, producer, asyncio.Event())
    task = asyncio.create_task(main(ctx, group_id or f"tracker-test-{uuid.uuid4().hex[:8]}"))
    try:
        yield task
    finally:
        ctx.stop.set()
        await asyncio.wait_for(asyncio.shield(task), 30)


async def wait_for(
    condition: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def new_campaign(pool: asyncpg.Pool, status: str = "in_progress") -> uuid.UUID:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('tracker test') RETURNING id")
    campaign_id: uuid.UUID = await pool.fetchval(
        """
        INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,
                               started_at)
        VALUES ('t', 's', '<p>h</p>', 'from@example.com', $1, 'sink', $2, now())
        RETURNING id
        """,
        list_id,
        status,
    )
    return campaign_id


StatusOf = Callable[[int], RecipientStatus]


def all_sent(_: int) -> RecipientStatus:
    return "sent"


def make_results(
    campaign_id: uuid.UUID,
    batches: int,
    per_batch: int,
    status_of: StatusOf = all_sent,
    suppressed: int = 0,
    first_recipient: int = 1,
) -> list[DeliveryResult]:
    """A campaign's whole plan of results; recipient ids are consecutive from 1."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    results = []
    for batch_no in range(batches):
        ids = range(
            first_recipient + batch_no * per_batch, first_recipient + (batch_no + 1) * per_batch
        )
        results.append(
            DeliveryResult(
                batch_id=f"{campaign_id}:{batch_no}",
                campaign_id=campaign_id,
                batch_no=batch_no,
                batches_total=batches,
                audience_total=batches * per_batch + suppressed,
                suppressed_total=suppressed,
                provider="sink",
                outcomes=[
                    RecipientOutcome(
                        recipient_id=rid,
                        email=f"r{rid}@example.com",
                        status=status_of(rid),
                        message_id=f"msg-{campaign_id.hex[:8]}-{rid}",
                        error="refused" if status_of(rid) == "failed" else None,
                    )
                    for rid in ids
                ],
                started_at=start + timedelta(seconds=batch_no),
                finished_at=start + timedelta(seconds=batch_no, milliseconds=500),
            )
        )
    return results


async def publish_results(producer: EventProducer, results: list[DeliveryResult]) -> None:
    await producer.send_many(Topic.DELIVERY_RESULT, [(str(r.campaign_id), r) for r in results])


async def stats_of(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT * FROM campaign_stats WHERE campaign_id = $1", campaign_id)
    return dict(row) if row is not None else None


async def recount(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> dict[str, int]:
    """The campaign's counters recomputed from the delivery log and the folded batches."""
    row = await pool.fetchrow(
        """
        SELECT count(*) FILTER (WHERE status = 'sent') AS sent,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = 'invalid') AS invalid,
               count(*) FILTER (WHERE status = 'unknown') AS unknown,
               count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered,
               count(*) FILTER (WHERE bounced_at IS NOT NULL) AS bounced,
               count(*) FILTER (WHERE dropped_at IS NOT NULL) AS dropped,
               count(*) FILTER (WHERE deferred_count > 0) AS deferred,
               coalesce(sum(open_count), 0) AS opens,
               count(*) FILTER (WHERE opened_at IS NOT NULL) AS unique_opens,
               coalesce(sum(click_count), 0) AS clicks,
               count(*) FILTER (WHERE clicked_at IS NOT NULL) AS unique_clicks,
               count(*) FILTER (WHERE spam_reported_at IS NOT NULL) AS spam_reports,
               count(*) FILTER (WHERE unsubscribed_at IS NOT NULL) AS unsubscribes,
               (SELECT count(*) FROM tracker_batches WHERE campaign_id = $1) AS batches_done
          FROM deliveries WHERE campaign_id = $1
        """,
        campaign_id,
    )
    return {k: int(v) for k, v in dict(row).items()}


def counters(stats: dict[str, Any]) -> dict[str, int]:
    """The counter columns of a campaign_stats row that `recount` can recompute."""
    names = (
        "sent failed invalid unknown cancelled delivered bounced dropped deferred opens"
        " unique_opens clicks unique_clicks spam_reports unsubscribes batches_done"
    ).split()
    return {name: int(stats[name]) for name in names}


async def campaign_status_events(
    settings: Settings, campaign_id: uuid.UUID, timeout: float = 20.0
) -> list[CampaignStatus]:
    """Read campaign.status from the beginning until an event of `campaign_id` shows up."""
    consumer = AIOKafkaConsumer(
        Topic.CAMPAIGN_STATUS.value,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"tracker-test-status-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    found: list[CampaignStatus] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    event = CampaignStatus.model_validate_json(record.value)
                    if event.campaign_id == campaign_id:
                        found.append(event)
            if found:
                # The partition is read to its end: a duplicate would be among these.
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        event = CampaignStatus.model_validate_json(record.value)
                        if event.campaign_id == campaign_id:
                            found.append(event)
                return found
    finally:
        await consumer.stop()
    return found
