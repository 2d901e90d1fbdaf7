"""Importer service wiring: `import.requested` in, `import.progress` / `import.completed` out;
and subscriptions: `contact.event` (subscribed, confirmed, left, preferences) in,
`message.requested` (confirmations) and `contact.event` (`joined`) out."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from libs.common import suppressions
from libs.common.blobs import BlobStore
from libs.common.events import ContactEvent, ImportProgress, ImportRequested, Topic
from libs.common.kafka import Consumed, EventConsumer
from libs.common.service import ServiceContext, run_service
from libs.common.settings import get_settings
from services.importer.job import Importer
from services.importer.repository import ImportRepository
from services.importer.retention import sweep_periodically
from services.importer.subscriptions import Subscriptions

GROUP_ID = "importer"


async def main(ctx: ServiceContext, *, group_id: str = GROUP_ID) -> None:
    async def publish(event: ImportProgress, final: bool) -> None:
        topic = Topic.IMPORT_COMPLETED if final else Topic.IMPORT_PROGRESS
        await ctx.producer.send(topic, str(event.list_id), event)

    key = suppressions.erasure_key(ctx.settings.secret_key) if ctx.settings.secret_key else None
    importer = Importer(ImportRepository(ctx.pool, key), BlobStore(ctx.pool), publish)

    async def handle(batch: list[Consumed[ImportRequested]]) -> None:
        # One partition's requests, in order: imports of one list never interleave.
        for item in batch:
            await importer.handle(item.event)

    # An import takes seconds; fetching one request at a time keeps a rebalance cheap.
    consumer: EventConsumer[ImportRequested] = EventConsumer(
        ctx.settings, Topic.IMPORT_REQUESTED, group_id, ctx.producer, max_records=1, epoch=ctx.epoch
    )
    subscriptions = Subscriptions(
        ctx.pool,
        secret_key=ctx.settings.secret_key,
        public_base_url=ctx.settings.public_base_url(),
        erasure_key=key,
    )

    async def handle_contacts(batch: list[Consumed[ContactEvent]]) -> None:
        # One address's events in order; what a fold decided is published before the
        # offsets are committed (a replay publishes it again: keys and event ids dedupe).
        for item in batch:
            out = await subscriptions.handle(item.event)
            if out.messages:
                await ctx.producer.send_many(
                    Topic.MESSAGE_REQUESTED, [(m.to, m) for m in out.messages]
                )
            if out.contacts:
                await ctx.producer.send_many(
                    Topic.CONTACT_EVENT, [(c.key, c) for c in out.contacts]
                )

    contacts: EventConsumer[ContactEvent] = EventConsumer(
        ctx.settings,
        Topic.CONTACT_EVENT,
        f"{group_id}.subscriptions",
        ctx.producer,
        max_records=100,
        epoch=ctx.epoch,
    )
    retention = timedelta(days=ctx.settings.import_rejections_retention_days)
    sweeper = asyncio.create_task(sweep_periodically(ctx.pool, retention, ctx.stop))
    try:
        # Together: a new member's first join waits on the coordinator (3 s on Tansu;
        # Kafka's initial rebalance delay is 3 s too), and imports would otherwise wait for
        # both joins. A task group cancels the other start when one fails.
        async with asyncio.TaskGroup() as starting:
            starting.create_task(consumer.start())
            starting.create_task(contacts.start())
        await asyncio.gather(
            consumer.run(handle, ctx.stop), contacts.run(handle_contacts, ctx.stop)
        )
    finally:
        await contacts.stop()
        await consumer.stop()
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)


def run() -> None:
    asyncio.run(run_service("importer", main, get_settings()))
