"""PostgreSQL access for /api/v1/webhooks: the endpoints (admin configuration) and their
delivery log, which services/webhooks writes."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from services.api.repository import Executor, Row, _page

ENDPOINT_COLUMNS = (
    "id, url, description, event_types, enabled, disabled_reason, disabled_at,"
    " failure_streak, last_success_at, last_failure_at, last_error, created_at, updated_at"
)
_SELECT_ENDPOINTS = f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints"  # noqa: S608
_SELECT_DELIVERIES = (
    "SELECT id, event_id, event_type, order_key AS campaign_id, status, attempts,"
    " CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at,"
    " last_attempt_at, last_status_code, last_error, delivered_at, created_at"
    " FROM webhook_deliveries"
)


async def insert_endpoint(
    db: Executor, url: str, event_types: list[str], description: str, secret_sealed: bytes
) -> Row:
    record = await db.fetchrow(
        "INSERT INTO webhook_endpoints (url, event_types, description, secret_sealed)"  # noqa: S608
        f" VALUES ($1, $2, $3, $4) RETURNING {ENDPOINT_COLUMNS}",
        url,
        event_types,
        description,
        secret_sealed,
    )
    assert record is not None
    return dict(record)


async def get_endpoint(db: Executor, endpoint_id: UUID) -> Row | None:
    record = await db.fetchrow(
        f"{_SELECT_ENDPOINTS} WHERE id = $1 AND deleted_at IS NULL", endpoint_id
    )
    return dict(record) if record is not None else None


async def page_endpoints(
    db: Executor, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    return await _page(db, _SELECT_ENDPOINTS, ["deleted_at IS NULL"], [], cursor, limit)


async def update_endpoint(db: Executor, endpoint_id: UUID, changes: dict[str, Any]) -> Row | None:
    """`changes`: any of url, event_types, description, enabled. Enabling clears the
    failure streak and the reason; disabling records `admin` as the reason."""
    enabled = changes.get("enabled")
    record = await db.fetchrow(
        "UPDATE webhook_endpoints SET"  # noqa: S608
        " url = COALESCE($2, url),"
        " event_types = COALESCE($3, event_types),"
        " description = COALESCE($4, description),"
        " enabled = COALESCE($5, enabled),"
        " failure_streak = CASE WHEN $5 IS TRUE AND NOT enabled THEN 0 ELSE failure_streak END,"
        " disabled_reason = CASE WHEN $5 IS TRUE THEN NULL"
        "   WHEN $5 IS FALSE AND enabled THEN 'admin' ELSE disabled_reason END,"
        " disabled_at = CASE WHEN $5 IS TRUE THEN NULL"
        "   WHEN $5 IS FALSE AND enabled THEN now() ELSE disabled_at END,"
        " updated_at = now()"
        f" WHERE id = $1 AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}",
        endpoint_id,
        changes.get("url"),
        changes.get("event_types"),
        changes.get("description"),
        enabled,
    )
    return dict(record) if record is not None else None


async def delete_endpoint(db: Executor, endpoint_id: UUID) -> Row | None:
    """Soft delete: it stops at once; its pending deliveries are dropped (marked failed)."""
    record = await db.fetchrow(
        "UPDATE webhook_endpoints SET deleted_at = now(), enabled = false, updated_at = now()"  # noqa: S608
        f" WHERE id = $1 AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}",
        endpoint_id,
    )
    if record is None:
        return None
    await db.execute(
        "UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint deleted'"
        " WHERE endpoint_id = $1 AND status = 'pending'",
        endpoint_id,
    )
    return dict(record)


async def page_deliveries(
    db: Executor, endpoint_id: UUID, cursor: str | None, limit: int, status: str | None
) -> tuple[list[Row], str | None]:
    where = ["endpoint_id = $1"]
    args: list[Any] = [endpoint_id]
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    return await _page(db, _SELECT_DELIVERIES, where, args, cursor, limit)
