"""What the message lane reads from PostgreSQL: templates (the content a message names, as
a claim check, like a campaign's content snapshot), suppressions with their reasons, and
the idempotency keys of `message.requested` events."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from libs.common.events import MessageRequested
from libs.common.idempotency import Accepted, accept
from libs.common.suppressions import ErasureKey
from services.dispatcher.messages import Template


class PostgresTemplates:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, template_id: UUID, version: int | None) -> Template | None:
        row = await self._pool.fetchrow(
            "SELECT v.subject, v.html, v.text FROM templates t JOIN template_versions v"
            " ON v.template_id = t.id AND v.version = coalesce($2, t.latest_version)"
            " WHERE t.id = $1",
            template_id,
            version,
        )
        return None if row is None else Template(row["subject"], row["html"], row["text"])


class PostgresSuppressionReasons:
    """Suppressions of the addresses, with their reasons, erasures included: a message names
    its address itself, so (unlike a campaign's recipients, which can never hold an erased
    address again) it is looked up by its erased token too (migration 0024)."""

    def __init__(self, pool: asyncpg.Pool, erasure: ErasureKey) -> None:
        self._pool = pool
        self._erasure = erasure

    async def __call__(self, emails: list[str]) -> dict[str, str]:
        if not emails:
            return {}
        k = self._erasure
        rows = await self._pool.fetch(
            "SELECT a.address AS email, s.reason FROM unnest($1::text[]) AS a(address)"
            " JOIN suppressions s ON s.email = a.address"
            " UNION ALL"
            " SELECT a.address, s.reason FROM unnest($1::text[]) AS a(address)"
            " JOIN suppressions s ON s.email = mailfleet_erased_token(a.address, $2, $3, $4)",
            sorted({e.strip().lower() for e in emails}),
            k.ipad,
            k.opad,
            k.seed,
        )
        return {r["email"]: r["reason"] for r in rows}


class PostgresKeys:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def __call__(self, event: MessageRequested, message_id: UUID, digest: bytes) -> Accepted:
        async with self._pool.acquire() as conn, conn.transaction():
            return await accept(
                conn, message_id=message_id, key=event.idempotency_key, digest=digest,
                recipient=event.to, category=event.category, source="event",
            )  # fmt: skip
