"""The edge's view of the broker: it publishes to existing topics and never creates them.

Creating a topic is how the services with a database notice a broker that lost its state
(they bump the broker epoch so that consumers re-read); the edge has no database, so it
leaves that to them and waits for the topics instead.
"""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient

from libs.common.events import Topic
from libs.common.logging import get_logger
from libs.common.settings import Settings

log = get_logger(__name__)

PUBLISHES = (Topic.DELIVERY_EVENT, Topic.CONTACT_EVENT)


async def missing_topics(settings: Settings) -> list[str]:
    """The topics the edge publishes to that the broker does not have."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    return [t.value for t in PUBLISHES if t.value not in existing]


async def wait_for_topics(settings: Settings) -> None:
    """Return once the broker answers and has the edge's topics."""
    delay = 0.5
    while True:
        try:
            missing = await missing_topics(settings)
        except Exception as exc:  # the broker is not up yet: any client error
            missing, error = [], repr(exc)
        else:
            error = ""
        if not missing and not error:
            return
        log.warning("broker not ready; retrying", missing=missing, error=error, retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def broker_ready(settings: Settings, timeout: float = 3.0) -> bool:
    try:
        return not await asyncio.wait_for(missing_topics(settings), timeout)
    except Exception:  # any client error means "not reachable"
        return False
