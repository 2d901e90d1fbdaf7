"""Read-side queries only the console needs; every figure comes from the tracker's
counters (campaign_stats), never from a COUNT(*) over recipients or deliveries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from libs.stats import report
from services.api.repository import Executor, zone_progress

RUNNING = ("in_progress", "paused")
_MAX_RUNNING_SHOWN = 50


@dataclass(frozen=True)
class Progress:
    """What a progress bar and the health colour show, for one campaign."""

    total: int
    done: int
    sent: int
    failed: int
    suppressed: int
    pending: int
    health: str | None
    delivered_rate: float | None
    report: dict[str, Any]

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0


def progress_of(counters: dict[str, Any] | None) -> Progress:
    stats = report.campaign_report(counters or {})
    total = int(stats["total"])
    return Progress(
        total=total,
        done=max(0, total - int(stats["pending"])),
        sent=int(stats["sent"]),
        failed=int(stats["failed"]),
        suppressed=int(stats["suppressed"]),
        pending=int(stats["pending"]),
        health=stats["health"],
        delivered_rate=stats["delivered_rate"],
        report=stats,
    )


async def progress_by_campaign(db: Executor, campaign_ids: list[UUID]) -> dict[UUID, Progress]:
    """One query for a whole page of campaigns (not one per row)."""
    if not campaign_ids:
        return {}
    rows = await db.fetch(
        "SELECT * FROM campaign_stats WHERE campaign_id = ANY($1::uuid[])", campaign_ids
    )
    found = {r["campaign_id"]: progress_of(dict(r)) for r in rows}
    return {cid: found.get(cid) or progress_of(None) for cid in campaign_ids}


async def campaigns_by_id(db: Executor, campaign_ids: list[UUID]) -> dict[UUID, dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM campaigns WHERE id = ANY($1::uuid[])", campaign_ids)
    return {r["id"]: dict(r) for r in rows}


async def counters_by_campaign(
    db: Executor, campaign_ids: list[UUID]
) -> dict[UUID, dict[str, Any]]:
    """The raw `campaign_stats` rows of several campaigns in one query."""
    rows = await db.fetch(
        "SELECT * FROM campaign_stats WHERE campaign_id = ANY($1::uuid[])", campaign_ids
    )
    return {r["campaign_id"]: dict(r) for r in rows}


async def running_campaigns(db: Executor) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, name, status, started_at FROM campaigns WHERE status = ANY($1::text[])"
        " ORDER BY started_at DESC NULLS LAST LIMIT $2",
        list(RUNNING),
        _MAX_RUNNING_SHOWN,
    )
    return [dict(r) for r in rows]


async def today_totals(db: Executor, since: Any) -> dict[str, int]:
    """Sends and failures finished since `since` (the start of the person's day), from the
    tracker's per-batch rows (one row per batch of up to 1000, indexed by campaign)."""
    row = await db.fetchrow(
        "SELECT coalesce(sum(sent), 0)::bigint AS sent, coalesce(sum(failed), 0)::bigint AS failed"
        " FROM tracker_batches WHERE finished_at >= $1",
        since,
    )
    return {"sent": int(row["sent"]), "failed": int(row["failed"])} if row else {}


async def recent_failures(db: Executor, limit: int = 10) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, name, status, finished_at FROM campaigns WHERE status = 'failed'"
        " ORDER BY finished_at DESC NULLS LAST LIMIT $1",
        limit,
    )
    return [dict(r) for r in rows]


async def list_names(db: Executor, limit: int = 500) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT id, name FROM lists ORDER BY created_at DESC LIMIT $1", limit)
    return [dict(r) for r in rows]


async def template_names(db: Executor, limit: int = 500) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT id, name FROM templates ORDER BY created_at DESC LIMIT $1", limit)
    return [dict(r) for r in rows]


async def list_columns(db: Executor, list_id: UUID, sample: int = 200) -> list[str]:
    """The merge fields a list offers: the keys of a sample of its recipients (the importer
    gives every row of a file the same columns), plus `email`."""
    rows = await db.fetch(
        "SELECT DISTINCT jsonb_object_keys(fields) AS key FROM"
        " (SELECT fields FROM recipients WHERE list_id = $1 AND jsonb_typeof(fields) = 'object'"
        " LIMIT $2) AS sample ORDER BY 1",
        list_id,
        sample,
    )
    return ["email", *(r["key"] for r in rows if r["key"] != "email")]


async def delivery_for_email(
    db: Executor, campaign_id: UUID, audience: dict[str, Any], email: str
) -> list[dict[str, Any]]:
    """The log row of one address: found through the lists' (list_id, email) index and the
    log's primary key, not by scanning a campaign's millions of rows for the address. An
    audience with segments may have mailed a row of another list: then the campaign's log
    is read by address."""
    address = email.strip().lower()
    lists = [UUID(str(x)) for x in audience.get("lists") or []]
    rows = await db.fetch(
        "SELECT d.recipient_id, d.email, d.status, d.error, d.last_event FROM recipients r"
        " JOIN deliveries d ON d.campaign_id = $1 AND d.recipient_id = r.id"
        " WHERE r.list_id = ANY($2::uuid[]) AND r.email = $3",
        campaign_id,
        lists,
        address,
    )
    if not rows and audience.get("segments"):
        rows = await db.fetch(
            "SELECT recipient_id, email, status, error, last_event FROM deliveries"
            " WHERE campaign_id = $1 AND email = $2",
            campaign_id,
            address,
        )
    return [dict(r) for r in rows]


async def audience_names(db: Executor, audience: dict[str, Any]) -> dict[str, str]:
    """The names of the lists and segments an audience names, by id (as text)."""
    lists = [UUID(str(x)) for k in ("lists", "exclude_lists") for x in audience.get(k) or []]
    segments = [
        UUID(str(x)) for k in ("segments", "exclude_segments") for x in audience.get(k) or []
    ]
    rows = await db.fetch(
        "SELECT id, name FROM lists WHERE id = ANY($1::uuid[])"
        " UNION ALL SELECT id, name FROM segments WHERE id = ANY($2::uuid[])",
        lists,
        segments,
    )
    return {str(r["id"]): r["name"] for r in rows}


async def zones_of(db: Executor, campaign: dict[str, Any] | None) -> dict[str, Any] | None:
    """A local-time or windowed campaign's plan by zone (issue 17): recipients not yet sent
    out per zone and when they are due, and those whose `timezone` field named no zone. None
    for a plain campaign, or before the plan."""
    if campaign is None or not (campaign.get("local_time") or campaign.get("send_window")):
        return None
    found = await zone_progress(db, campaign["id"])
    if found is None:
        return None
    invalid, waiting = found
    return {"invalid": invalid, "waiting": waiting}
