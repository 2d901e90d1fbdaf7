"""PostgreSQL access for the API: its own tables, and the read models it shows.

Writes only api_keys, lists, campaigns and import_requests (blobs go through BlobStore);
reads import_jobs, campaign_stats and recipients, written by other services for reading.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.api.pagination import decode_cursor, encode_cursor

Executor = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy
Row = dict[str, Any]

# `audience`: NULL on a row written with `list_id` alone (by an internal service, or
# before migration 0026) means {"lists": [list_id]}: shown as such.
CAMPAIGN_COLUMNS = (
    "id, name, subject, html, text, from_email, from_name, list_id, provider, status,"
    " send_at, timezone, schedule_revision, created_at, updated_at, started_at, finished_at,"
    " template_id, template_version, pause_reason, paused_by, tracking, guard, local_time,"
    " local_send_at, send_window, max_per_hour,"
    " coalesce(audience, jsonb_build_object('lists', jsonb_build_array(list_id),"
    " 'segments', '[]'::jsonb, 'exclude_lists', '[]'::jsonb, 'exclude_segments', '[]'::jsonb))"
    " AS audience"
)
EDITABLE_STATUSES = ("draft", "scheduled")
# The rate cap alone may change until the campaign has ended (issue 17 item 4).
CAP_EDITABLE_STATUSES = ("draft", "scheduled", "in_progress", "paused")


def _row(record: asyncpg.Record | None) -> Row | None:
    return dict(record) if record is not None else None


async def _page(
    db: Executor,
    select: str,
    where: list[str],
    args: list[Any],
    cursor: str | None,
    limit: int,
) -> tuple[list[Row], str | None]:
    """Keyset page over (created_at, id) newest first; `select` has a `created_at` column.

    `select` and `where` are fixed SQL from this module; values only travel as parameters.
    """
    args = list(args)
    where = list(where)
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        args += [created_at, row_id]
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql = f"{select} {clause} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"  # noqa: S608
    rows = [dict(r) for r in await db.fetch(sql, *args)]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"])


# ----- api keys -----


async def find_active_key(db: Executor, key_hash: bytes) -> Row | None:
    record = await db.fetchrow(
        "SELECT id, name, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )
    return _row(record)


async def touch_key(db: Executor, key_id: UUID) -> None:
    # At most one write a minute per key: a busy key should not write on every request.
    await db.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = $1"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        key_id,
    )


async def insert_key(
    db: Executor, name: str, role: str, prefix: str, key_hash: bytes
) -> Row | None:
    """None when a key with this hash exists already."""
    record = await db.fetchrow(
        "INSERT INTO api_keys (name, role, key_prefix, key_hash) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (key_hash) DO NOTHING"
        " RETURNING id, name, role, key_prefix, created_at, last_used_at, revoked_at",
        name,
        role,
        prefix,
        key_hash,
    )
    return _row(record)


async def has_active_admin(db: Executor) -> bool:
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL)"
        )
    )


async def page_keys(db: Executor, cursor: str | None, limit: int) -> tuple[list[Row], str | None]:
    select = "SELECT id, name, role, key_prefix, created_at, last_used_at, revoked_at FROM api_keys"
    return await _page(db, select, [], [], cursor, limit)


async def revoke_key(db: Executor, key_id: UUID) -> Row | None:
    record = await db.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1"
        " RETURNING id, name, role, key_prefix, created_at, last_used_at, revoked_at",
        key_id,
    )
    return _row(record)


# ----- lists -----


_LIST_COLUMNS = (
    "id, name, default_timezone, created_at, public_id, opt_in, confirmation_from_email,"
    " confirmation_from_name, confirmation_provider, editable_fields, consent_text,"
    " consent_text_version"
)
# What a list's subscription settings may set (migration 0027), beside name and zone.
LIST_SETTINGS = (
    "opt_in",
    "confirmation_from_email",
    "confirmation_from_name",
    "confirmation_provider",
    "editable_fields",
    "consent_text",
)
_LIST_WRITABLE = ("name", "default_timezone", *LIST_SETTINGS)


async def insert_list(
    db: Executor, name: str, default_timezone: str | None = None, settings: Row | None = None
) -> Row:
    values = {"name": name, "default_timezone": default_timezone}
    values |= {k: v for k, v in (settings or {}).items() if k in LIST_SETTINGS and v is not None}
    names = list(values)
    record = await db.fetchrow(
        f"INSERT INTO lists ({', '.join(names)})"  # noqa: S608 (names from _LIST_WRITABLE)
        f" VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))})"
        f" RETURNING {_LIST_COLUMNS}",
        *values.values(),
    )
    assert record is not None
    return dict(record)


async def get_list(db: Executor, list_id: UUID) -> Row | None:
    return _row(
        await db.fetchrow(f"SELECT {_LIST_COLUMNS} FROM lists WHERE id = $1", list_id)  # noqa: S608
    )


async def update_list(db: Executor, list_id: UUID, changes: Row) -> Row | None:
    """Set the given columns (name, zone, subscription settings); None for an unknown list.
    A new `consent_text` bumps `consent_text_version`."""
    names = [n for n in _LIST_WRITABLE if n in changes]
    sets = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names)) or "name = name"
    if "consent_text" in names:
        index = names.index("consent_text") + 2
        sets += (
            ", consent_text_version = consent_text_version"
            f" + (consent_text IS DISTINCT FROM ${index})::int"
        )
    record = await db.fetchrow(
        f"UPDATE lists SET {sets} WHERE id = $1 RETURNING {_LIST_COLUMNS}",  # noqa: S608
        list_id,
        *(changes[n] for n in names),
    )
    return _row(record)


async def list_exists(db: Executor, list_id: UUID) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM lists WHERE id = $1)", list_id))


# A list's size is the sum of the changes its writers appended (migration 0031), never a
# COUNT(*) over its recipients; past this many rows a read folds them into one.
FOLD_COUNT_ROWS = 64
_FOLD_COUNTS = """
WITH gone AS (DELETE FROM list_recipient_counts WHERE list_id = $1 RETURNING delta)
INSERT INTO list_recipient_counts (list_id, delta)
SELECT $1, sum(delta) FROM gone HAVING count(*) > 0
"""


async def recipient_count(db: Executor, list_id: UUID) -> int:
    """Exact: every statement that adds or removes recipients appended its net change. One
    statement folds the rows it deletes into one; rows appended meanwhile stay apart."""
    row = await db.fetchrow(
        "SELECT coalesce(sum(delta), 0)::bigint AS n, count(*) AS rows"
        " FROM list_recipient_counts WHERE list_id = $1",
        list_id,
    )
    assert row is not None
    if row["rows"] > FOLD_COUNT_ROWS:
        await db.execute(_FOLD_COUNTS, list_id)
    return int(row["n"])


async def page_lists(db: Executor, cursor: str | None, limit: int) -> tuple[list[Row], str | None]:
    return await _page(db, f"SELECT {_LIST_COLUMNS} FROM lists", [], [], cursor, limit)  # noqa: S608


async def find_recipient(db: Executor, list_id: UUID | None, email_or_id: str) -> Row | None:
    """On the list; on any list (its oldest row) when `list_id` is None."""
    by_id = email_or_id.isdigit() and len(email_or_id) <= 18  # fits a bigint
    value: int | str = (
        int(email_or_id) if by_id else email_or_id.strip().lower().replace("\x00", "")
    )
    column = "id" if by_id else "email"
    if list_id is None:
        sql = f"SELECT id, email, fields FROM recipients WHERE {column} = $1 ORDER BY id LIMIT 1"  # noqa: S608
        return _row(await db.fetchrow(sql, value))
    sql = f"SELECT id, email, fields FROM recipients WHERE list_id = $1 AND {column} = $2"  # noqa: S608
    return _row(await db.fetchrow(sql, list_id, value))


# ----- imports -----

_IMPORT_SELECT = (
    "SELECT r.id, r.list_id, r.filename, r.requested_at AS created_at,"
    " coalesce(j.status, 'queued') AS status, coalesce(j.rows_total, 0) AS rows_total,"
    " coalesce(j.rows_imported, 0) AS rows_imported, coalesce(j.rows_updated, 0) AS rows_updated,"
    " coalesce(j.rows_rejected, 0) AS rows_rejected,"
    " coalesce(j.rows_duplicate, 0) AS rows_duplicate,"
    " coalesce(j.rows_suppressed, 0) AS rows_suppressed, j.error, j.started_at, j.finished_at"
    " FROM import_requests r LEFT JOIN import_jobs j ON j.id = r.id"
)


async def insert_import_request(
    db: Executor, import_id: UUID, list_id: UUID, blob_id: UUID, filename: str
) -> None:
    await db.execute(
        "INSERT INTO import_requests (id, list_id, blob_id, filename) VALUES ($1, $2, $3, $4)",
        import_id,
        list_id,
        blob_id,
        filename,
    )


async def delete_import_request(db: Executor, import_id: UUID) -> None:
    await db.execute("DELETE FROM import_requests WHERE id = $1", import_id)


def _import_out(row: Row) -> Row:
    row["requested_at"] = row.pop("created_at")
    return row


async def get_import(db: Executor, import_id: UUID) -> Row | None:
    row = _row(await db.fetchrow(_IMPORT_SELECT + " WHERE r.id = $1", import_id))
    return _import_out(row) if row else None


async def page_imports(
    db: Executor, list_id: UUID, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    # The keyset columns must be unqualified for _page: wrap the join in a subquery.
    select = f"SELECT * FROM ({_IMPORT_SELECT} WHERE r.list_id = $1) AS imports"  # noqa: S608
    rows, next_cursor = await _page(db, select, [], [list_id], cursor, limit)
    return [_import_out(r) for r in rows], next_cursor


# ----- campaigns -----


async def insert_campaign(db: Executor, fields: Row) -> Row:
    record = await db.fetchrow(
        "INSERT INTO campaigns (name, subject, html, text, from_email, from_name, list_id,"  # noqa: S608
        " provider, template_id, template_version, tracking, guard, audience, audience_filters,"
        " max_per_hour)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        f" RETURNING {CAMPAIGN_COLUMNS}",
        fields["name"],
        fields["subject"],
        fields["html"],
        fields["text"],
        fields["from_email"],
        fields["from_name"],
        fields["list_id"],
        fields["provider"],
        fields.get("template_id"),
        fields.get("template_version"),
        fields.get("tracking", True),
        guard_thresholds(fields.get("guard")),
        fields.get("audience"),
        fields.get("audience_filters"),
        fields.get("max_per_hour"),
    )
    assert record is not None
    return dict(record)


def guard_thresholds(guard: Row | None) -> Row | None:
    """What `campaigns.guard` stores: only the keys given (None: the global settings)."""
    if not guard:
        return None
    given = {key: value for key, value in guard.items() if value is not None}
    return given or None


async def get_campaign(db: Executor, campaign_id: UUID, *, lock: bool = False) -> Row | None:
    suffix = " FOR UPDATE" if lock else ""
    sql = f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1{suffix}"  # noqa: S608
    return _row(await db.fetchrow(sql, campaign_id))


async def campaign_exists(db: Executor, campaign_id: UUID) -> bool:
    sql = "SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = $1)"
    return bool(await db.fetchval(sql, campaign_id))


async def page_campaigns(
    db: Executor,
    status: str | None,
    cursor: str | None,
    limit: int,
    name_contains: str | None = None,
) -> tuple[list[Row], str | None]:
    select = f"SELECT {CAMPAIGN_COLUMNS} FROM campaigns"  # noqa: S608
    where: list[str] = []
    args: list[Any] = []
    if status:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if name_contains:
        # The console's name search: a substring, with LIKE's wildcards taken literally.
        escaped = name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args.append(f"%{escaped}%")
        where.append(f"name ILIKE ${len(args)}")
    return await _page(db, select, where, args, cursor, limit)


async def update_campaign_content(db: Executor, campaign_id: UUID, changes: Row) -> Row | None:
    """Apply `changes` if the campaign is still editable (compare-and-set on status); the
    rate cap alone may change until the campaign has ended."""
    allowed = (
        "name", "subject", "html", "text", "from_email", "from_name", "list_id", "provider",
        "tracking", "guard", "audience", "audience_filters", "max_per_hour",
    )  # fmt: skip
    statuses = CAP_EDITABLE_STATUSES if set(changes) == {"max_per_hour"} else EDITABLE_STATUSES
    if "guard" in changes:
        changes = {**changes, "guard": guard_thresholds(changes["guard"])}
    names = [name for name in allowed if name in changes]
    sets = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    sql = (
        f"UPDATE campaigns SET {sets}, updated_at = now()"  # noqa: S608
        f" WHERE id = $1 AND status = ANY(${len(names) + 2}::text[])"
        f" RETURNING {CAMPAIGN_COLUMNS}"
    )
    record = await db.fetchrow(sql, campaign_id, *(changes[n] for n in names), list(statuses))
    return _row(record)


async def mark_scheduled(
    db: Executor,
    campaign_id: UUID,
    send_at: datetime,
    timezone: str,
    local_send_at: datetime | None = None,
    send_window: dict[str, Any] | None = None,
) -> Row | None:
    """draft|scheduled → scheduled with a new revision; None when the status does not allow it.
    `local_send_at` (a wall time) makes it a local-time schedule."""
    record = await db.fetchrow(
        "UPDATE campaigns SET status = 'scheduled', send_at = $2, timezone = $3,"  # noqa: S608
        " schedule_revision = schedule_revision + 1, updated_at = now(),"
        " local_time = $5::timestamp IS NOT NULL, local_send_at = $5, send_window = $6"
        f" WHERE id = $1 AND status = ANY($4::text[]) RETURNING {CAMPAIGN_COLUMNS}",
        campaign_id,
        send_at,
        timezone,
        list(EDITABLE_STATUSES),
        local_send_at,
        send_window,
    )
    return _row(record)


async def mark_unscheduled(db: Executor, campaign_id: UUID) -> Row | None:
    """scheduled → draft with a new revision (which outdates the earlier schedule)."""
    record = await db.fetchrow(
        "UPDATE campaigns SET status = 'draft', send_at = NULL,"  # noqa: S608
        " local_time = false, local_send_at = NULL, send_window = NULL,"
        " schedule_revision = schedule_revision + 1, updated_at = now()"
        f" WHERE id = $1 AND status = 'scheduled' RETURNING {CAMPAIGN_COLUMNS}",
        campaign_id,
    )
    return _row(record)


async def zone_progress(db: Executor, campaign_id: UUID) -> tuple[int, list[Row]] | None:
    """The scheduler's plan, for display: recipients whose `timezone` field was invalid,
    and the recipients not yet emitted per zone with their next due instant. None before
    the plan, or for a plan without zones."""
    invalid = await db.fetchval(
        "SELECT invalid_timezones FROM campaign_plans WHERE campaign_id = $1", campaign_id
    )
    if invalid is None:
        return None
    rows = await db.fetch(
        """
        SELECT zone, min(due_at) AS due_at, sum(cardinality(recipient_ids))::int AS recipients
          FROM batch_plans
         WHERE campaign_id = $1 AND emitted = 0 AND zone IS NOT NULL
         GROUP BY zone ORDER BY min(due_at), zone
        """,
        campaign_id,
    )
    return int(invalid), [dict(r) for r in rows]


async def campaign_counters(db: Executor, campaign_id: UUID) -> Row | None:
    record = await db.fetchrow(
        "SELECT audience_total, sent, failed, suppressed, invalid, unknown, cancelled"
        " FROM campaign_stats WHERE campaign_id = $1",
        campaign_id,
    )
    return _row(record)


# ----- audiences (issue 15 item 2) -----


async def existing_lists(db: Executor, ids: list[UUID]) -> set[UUID]:
    rows = await db.fetch("SELECT id FROM lists WHERE id = ANY($1::uuid[])", ids)
    return {r["id"] for r in rows}


async def segment_filters(db: Executor, ids: list[UUID]) -> dict[UUID, Any]:
    """The filter of each segment found (the others are missing)."""
    rows = await db.fetch("SELECT id, filter FROM segments WHERE id = ANY($1::uuid[])", ids)
    return {r["id"]: r["filter"] for r in rows}


async def audience_filters(db: Executor, campaign_id: UUID) -> Any:
    """The campaign's copy of its segments' filters (`{"<segment id>": filter}`)."""
    return await db.fetchval("SELECT audience_filters FROM campaigns WHERE id = $1", campaign_id)


async def set_audience_filters(db: Executor, campaign_id: UUID, filters: Row) -> None:
    await db.execute(
        "UPDATE campaigns SET audience_filters = $2 WHERE id = $1", campaign_id, filters
    )


async def audience_plan(db: Executor, campaign_id: UUID) -> Row | None:
    """The audience's size at planning (the scheduler's plan), None before."""
    record = await db.fetchrow(
        "SELECT audience_total AS total, suppressed_total AS suppressed,"
        " audience_total - suppressed_total AS sendable, planned_at"
        " FROM campaign_plans WHERE campaign_id = $1",
        campaign_id,
    )
    return _row(record)
