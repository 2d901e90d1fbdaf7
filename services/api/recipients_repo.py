"""Single-recipient reads and writes by API.

The importer owns the recipients table; adding, editing and removing one recipient by API
is the accepted exception. Addresses arrive here already normalised exactly as the
importer normalises them, so both dedupe on the same (list_id, email) key.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from services.api.repository import Executor, Row
from services.api.seq_cursor import decode_seq_cursor, encode_seq_cursor

_COLUMNS = "id, list_id, email, fields, status, created_at, updated_at"


class AddressTaken(Exception):
    """Another recipient of the list has this address."""


class ListGone(Exception):
    """The list does not exist (any more)."""


def _row(record: asyncpg.Record | None) -> Row | None:
    return dict(record) if record is not None else None


async def page_recipients(
    db: Executor, list_id: UUID, email: str | None, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    """Oldest first by id (the order they were added); raises BadCursor for a foreign cursor."""
    args: list[Any] = [list_id]
    where = ["list_id = $1"]
    if email is not None:
        args.append(email)
        where.append(f"email = ${len(args)}")
    if cursor:
        args.append(decode_seq_cursor(cursor))
        where.append(f"id > ${len(args)}")
    args.append(limit + 1)
    sql = (
        f"SELECT {_COLUMNS} FROM recipients WHERE {' AND '.join(where)}"  # noqa: S608
        f" ORDER BY id LIMIT ${len(args)}"
    )
    rows = [dict(r) for r in await db.fetch(sql, *args)]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_seq_cursor(rows[-1]["id"])


async def get_recipient(db: Executor, list_id: UUID, recipient_id: int) -> Row | None:
    sql = f"SELECT {_COLUMNS} FROM recipients WHERE list_id = $1 AND id = $2"  # noqa: S608
    return _row(await db.fetchrow(sql, list_id, recipient_id))


async def find_by_email(db: Executor, list_id: UUID, email: str) -> Row | None:
    sql = f"SELECT {_COLUMNS} FROM recipients WHERE list_id = $1 AND email = $2"  # noqa: S608
    return _row(await db.fetchrow(sql, list_id, email))


async def find_many(db: Executor, list_id: UUID, emails: list[str]) -> dict[str, Row]:
    sql = (
        f"SELECT {_COLUMNS} FROM recipients"  # noqa: S608
        " WHERE list_id = $1 AND email = ANY($2::text[])"
    )
    return {r["email"]: dict(r) for r in await db.fetch(sql, list_id, emails)}


async def insert_recipient(
    db: Executor, list_id: UUID, email: str, fields: dict[str, Any]
) -> Row | None:
    """None when the list has this address already; raises ListGone.

    `recipients` has no foreign key to `lists` (migration 0008): the list row is locked
    FOR KEY SHARE, as the key's check did, so that it cannot be deleted under the insert.
    """
    sql = (
        "WITH target AS (SELECT id FROM lists WHERE id = $1 FOR KEY SHARE)"  # noqa: S608
        " INSERT INTO recipients (list_id, email, fields) SELECT id, $2, $3 FROM target"
        f" ON CONFLICT (list_id, email) DO NOTHING RETURNING {_COLUMNS}"
    )
    row = _row(await db.fetchrow(sql, list_id, email, fields))
    if row is None and not await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM lists WHERE id = $1)", list_id
    ):
        raise ListGone(list_id)
    return row


async def record_consent(db: Executor, list_id: UUID, email: str, basis: str, source: str) -> None:
    """The consent basis an API add states (table `consents`, migration 0027)."""
    await db.execute(
        "INSERT INTO consents (list_id, email, basis, source, status) VALUES ($1, $2, $3, $4,"
        " 'given')",
        list_id,
        email,
        basis,
        source,
    )


async def update_recipient(
    db: Executor,
    list_id: UUID,
    recipient_id: int,
    email: str | None,
    set_fields: dict[str, Any],
    drop_fields: list[str],
) -> Row | None:
    """Change the address (when given) and merge the fields; raises AddressTaken."""
    sql = (
        "UPDATE recipients SET email = coalesce($3, email),"  # noqa: S608
        " fields = (fields || $4::jsonb) - $5::text[], updated_at = now()"
        f" WHERE list_id = $1 AND id = $2 RETURNING {_COLUMNS}"
    )
    try:
        record = await db.fetchrow(sql, list_id, recipient_id, email, set_fields, drop_fields)
    except asyncpg.UniqueViolationError as exc:
        raise AddressTaken(email) from exc
    return _row(record)


async def delete_recipient(db: Executor, list_id: UUID, recipient_id: int) -> bool:
    deleted = await db.fetchval(
        "DELETE FROM recipients WHERE list_id = $1 AND id = $2 RETURNING id", list_id, recipient_id
    )
    return deleted is not None


async def delete_by_email(db: Executor, list_id: UUID, email: str) -> bool:
    deleted = await db.fetchval(
        "DELETE FROM recipients WHERE list_id = $1 AND email = $2 RETURNING id", list_id, email
    )
    return deleted is not None


async def suppression_reason(db: Executor, email: str) -> str | None:
    """Why the address is suppressed (the tracker's table), or None when it is not."""
    value = await db.fetchval("SELECT reason FROM suppressions WHERE email = $1", email)
    return str(value) if value is not None else None


async def suppression_reasons(db: Executor, emails: list[str]) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT email, reason FROM suppressions WHERE email = ANY($1::text[])", emails
    )
    return {r["email"]: r["reason"] for r in rows}
