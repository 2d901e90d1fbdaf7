"""The broker epoch: a counter in PostgreSQL bumped whenever topics had to be created.

Kafka is transport and may be lost (the local broker keeps nothing on disk). When it is,
offsets that consumers hold in memory, or that a slow member committed into the new broker,
point into logs that no longer exist. Watching one number in PostgreSQL lets every consumer
notice, rejoin, and read the re-created topics from their start.
"""

from __future__ import annotations

import asyncpg


class BrokerEpoch:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def read(self) -> int:
        return int(await self.pool.fetchval("SELECT epoch FROM broker_epoch WHERE id = 1") or 0)

    async def bump(self) -> int:
        value = await self.pool.fetchval(
            "UPDATE broker_epoch SET epoch = epoch + 1, changed_at = now() WHERE id = 1 RETURNING epoch"
        )
        return int(value)
