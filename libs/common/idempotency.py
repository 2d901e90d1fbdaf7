"""Idempotency keys of transactional messages (table message_requests).

The API (an `Idempotency-Key` header) and the dispatcher (the `idempotency_key` of a
`message.requested` event) both record the messages they accept here: a key stays bound to
its first message for 24 h. The same key with the same body is that message again (its id
is returned; the send ledger keeps it from going out twice); with another body it is a
conflict. The body is compared by the SHA-256 of its canonical JSON.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

KEY_TTL_HOURS = 24

# What a message is, for comparing two requests made with one key: everything but the ids.
_NOT_BODY = frozenset({"message_id", "idempotency_key", "requested_at", "schema_version"})


def body_hash(body: dict[str, Any]) -> bytes:
    canonical = {k: v for k, v in body.items() if k not in _NOT_BODY}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).digest()


@dataclass(frozen=True)
class Accepted:
    message_id: UUID
    # `new`: first time; `repeat`: the key's earlier message, same body; `conflict`: the key
    # is bound to another body (nothing is recorded).
    outcome: Literal["new", "repeat", "conflict"]


async def accept(
    conn: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy,
    *,
    message_id: UUID,
    key: str | None,
    digest: bytes,
    recipient: str,
    category: str | None,
    source: Literal["api", "event"],
) -> Accepted:
    """Record the message; with a key, bind it (or find what it is bound to) atomically."""
    if key is not None:
        # A key older than the window is free again (its message row stays, keyless).
        await conn.execute(
            "UPDATE message_requests SET idempotency_key = NULL WHERE idempotency_key = $1"
            " AND created_at < now() - make_interval(hours => $2)",
            key,
            KEY_TTL_HOURS,
        )
    row = await conn.fetchrow(
        "INSERT INTO message_requests (message_id, idempotency_key, body_hash, recipient,"
        " category, source) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT DO NOTHING RETURNING message_id",
        message_id,
        key,
        digest,
        recipient,
        category,
        source,
    )
    if row is not None:
        return Accepted(message_id, "new")
    found = None
    if key is not None:
        found = await conn.fetchrow(
            "SELECT message_id, body_hash FROM message_requests WHERE idempotency_key = $1", key
        )
    if found is None:  # the message id was taken (a redelivered event, or a reused id)
        found = await conn.fetchrow(
            "SELECT message_id, body_hash FROM message_requests WHERE message_id = $1",
            message_id,
        )
    if found is None:  # the conflicting row went away meanwhile: try once more
        return await accept(
            conn, message_id=message_id, key=key, digest=digest, recipient=recipient,
            category=category, source=source,
        )  # fmt: skip
    same = bytes(found["body_hash"]) == digest
    return Accepted(found["message_id"], "repeat" if same else "conflict")
