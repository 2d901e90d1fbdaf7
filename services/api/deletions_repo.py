"""What deleting a list or a campaign reads and removes (the API's own tables)."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import asyncpg

from services.api.repository import Executor

# A queued import the importer never picked up (e.g. its event was lost with the broker)
# must not keep a list forever.
_ABANDONED_QUEUED_IMPORT = timedelta(hours=1)


class ListBusy(Exception):
    """Another transaction holds the list (an import loading into it)."""


async def lock_list(db: Executor, list_id: UUID) -> bool:
    """Lock the list row for this transaction (campaign inserts wait on it); False if none.

    Raises ListBusy at once, instead of waiting, while another transaction holds the row:
    an import holds it (FOR KEY SHARE) until its load commits, which may take minutes."""
    try:
        found = await db.fetchval("SELECT id FROM lists WHERE id = $1 FOR UPDATE NOWAIT", list_id)
    except asyncpg.LockNotAvailableError as exc:
        raise ListBusy(str(list_id)) from exc
    return found is not None


async def campaigns_by_status(db: Executor, list_id: UUID) -> dict[str, int]:
    """Campaigns whose audience names the list, to include or to exclude (migration 0026)."""
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM campaigns"
        " WHERE list_id = $1 OR audience -> 'lists' ? $1::text"
        " OR audience -> 'exclude_lists' ? $1::text"
        " GROUP BY status",
        list_id,
    )
    return {r["status"]: int(r["n"]) for r in rows}


async def pending_imports(db: Executor, list_id: UUID) -> int:
    value = await db.fetchval(
        "SELECT count(*) FROM import_requests r LEFT JOIN import_jobs j ON j.id = r.id"
        " WHERE r.list_id = $1 AND ("
        "  j.status = 'running'"
        "  OR (j.id IS NULL AND r.requested_at > now() - $2::interval)"
        "  OR j.status = 'queued')",
        list_id,
        _ABANDONED_QUEUED_IMPORT,
    )
    return int(value)


async def delete_list(db: Executor, list_id: UUID) -> None:
    """The list, its recipients (cascade), its import requests and their uploaded files."""
    blob_ids = [
        r["blob_id"]
        for r in await db.fetch(
            "DELETE FROM import_requests WHERE list_id = $1 RETURNING blob_id", list_id
        )
    ]
    await db.execute("DELETE FROM lists WHERE id = $1", list_id)
    if blob_ids:
        await db.execute("DELETE FROM blobs WHERE id = ANY($1::uuid[])", blob_ids)


async def delete_draft_campaign(db: Executor, campaign_id: UUID) -> bool:
    """Compare-and-set on the status: only a draft goes."""
    deleted = await db.fetchval(
        "DELETE FROM campaigns WHERE id = $1 AND status = 'draft' RETURNING id", campaign_id
    )
    return deleted is not None
