"""PostgreSQL access for console users and sessions (tables of migration 0013)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from services.api.repository import Executor

Row = dict[str, Any]
_USER_COLUMNS = "id, email, role, timezone, created_at, disabled_at"


async def find_user_for_login(db: Executor, email: str) -> Row | None:
    record = await db.fetchrow(
        "SELECT id, password_hash FROM console_users WHERE email = $1 AND disabled_at IS NULL",
        email,
    )
    return dict(record) if record else None


async def insert_user(
    db: Executor, email: str, password_hash: str, role: str, timezone: str | None = None
) -> Row | None:
    """None when a user with this email exists already."""
    record = await db.fetchrow(
        "INSERT INTO console_users (email, password_hash, role, timezone)"  # noqa: S608
        " VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING"
        f" RETURNING {_USER_COLUMNS}",
        email,
        password_hash,
        role,
        timezone,
    )
    return dict(record) if record else None


async def has_active_admin(db: Executor) -> bool:
    sql = "SELECT EXISTS (SELECT 1 FROM console_users WHERE role = 'admin' AND disabled_at IS NULL)"
    return bool(await db.fetchval(sql))


async def list_users(db: Executor, limit: int = 200) -> list[Row]:
    rows = await db.fetch(
        f"SELECT {_USER_COLUMNS} FROM console_users ORDER BY email LIMIT $1",  # noqa: S608
        limit,
    )
    return [dict(r) for r in rows]


async def disable_user(db: Executor, user_id: UUID) -> bool:
    """Disable and sign out everywhere, in one statement."""
    done = await db.fetchval(
        "WITH gone AS (DELETE FROM console_sessions WHERE user_id = $1)"
        " UPDATE console_users SET disabled_at = coalesce(disabled_at, now())"
        " WHERE id = $1 RETURNING true",
        user_id,
    )
    return bool(done)


async def set_timezone(db: Executor, user_id: UUID, timezone: str | None) -> None:
    await db.execute("UPDATE console_users SET timezone = $2 WHERE id = $1", user_id, timezone)


async def insert_session(db: Executor, token_hash: bytes, user_id: UUID, now: datetime) -> None:
    await db.execute(
        "INSERT INTO console_sessions (token_hash, user_id, created_at, last_seen_at)"
        " VALUES ($1, $2, $3, $3)",
        token_hash,
        user_id,
        now,
    )


async def find_session(db: Executor, token_hash: bytes) -> Row | None:
    record = await db.fetchrow(
        "SELECT s.created_at, s.last_seen_at, u.id AS user_id, u.email, u.role, u.timezone"
        " FROM console_sessions s JOIN console_users u ON u.id = s.user_id"
        " WHERE s.token_hash = $1 AND u.disabled_at IS NULL",
        token_hash,
    )
    return dict(record) if record else None


async def touch_session(db: Executor, token_hash: bytes, now: datetime) -> None:
    await db.execute(
        "UPDATE console_sessions SET last_seen_at = $2 WHERE token_hash = $1", token_hash, now
    )


async def delete_session(db: Executor, token_hash: bytes) -> None:
    await db.execute("DELETE FROM console_sessions WHERE token_hash = $1", token_hash)
