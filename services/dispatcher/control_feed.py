"""Every dispatcher instance reads all of `campaign.control` (no consumer group).

The events only say "look again now": the status itself is read from PostgreSQL (see
`campaign_status`), so reading the topic from its beginning is harmless (events of
campaigns this instance is not sending are ignored), and Tansu's undercounting end
offsets, which break `auto_offset_reset="latest"`, do not matter.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from libs.common.events import CampaignControl, Topic
from libs.common.kafka_security import kafka_connection_options
from libs.common.logging import get_logger
from libs.common.settings import Settings
from services.dispatcher.campaign_status import CampaignStatuses

log = get_logger(__name__)


async def follow_control_events(
    settings: Settings, statuses: CampaignStatuses, stop: asyncio.Event
) -> None:
    consumer = AIOKafkaConsumer(
        Topic.CAMPAIGN_CONTROL.value,
        **kafka_connection_options(settings),
        group_id=None,  # every instance sees every event
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            except KafkaError as exc:
                log.warning("control fetch failed; retrying", error=str(exc))
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    try:
                        event = CampaignControl.model_validate_json(record.value or b"")
                    except ValidationError:
                        continue  # the scheduler's consumer dead-letters it
                    statuses.poke(event.campaign_id)
    finally:
        await consumer.stop()
