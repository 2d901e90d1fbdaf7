"""PostgreSQL access for /api/v1/automations. services/automations runs them; the API
writes definitions (each edit a new version), pauses, resumes, and reads runs and stats.

Per-step stats read `automation_steps` (one row per send) joined to the tracker's read
model `delivery_events`, whose `campaign_id` is the message id for a transactional or
automation message: opened = an `open` or `click` event, clicked = a `click` event."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from libs.automations.definition import Definition
from services.api.repository import Executor, Row, _page

_SELECT = (
    "SELECT a.id, a.name, a.status, a.version, v.definition, a.created_at, a.updated_at"
    " FROM automations a JOIN automation_versions v"
    " ON v.automation_id = a.id AND v.version = a.version"
)
_RUN_COLUMNS = (
    "id, automation_id, version, email, trigger, status, step,"
    " CASE WHEN status = 'active' THEN due_at END AS due_at, stop_reason, goal_at,"
    " started_at, finished_at"
)


def _trigger_columns(definition: Definition) -> tuple[str, UUID | None, str | None]:
    trigger = definition.trigger
    return trigger.kind, getattr(trigger, "list_id", None), getattr(trigger, "event", None)


async def insert(db: Executor, name: str, definition: Definition, status: str) -> Row:
    automation_id = uuid.uuid4()
    kind, list_id, event = _trigger_columns(definition)
    await db.execute(
        "INSERT INTO automations (id, name, status, trigger_kind, trigger_list_id, trigger_event)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        automation_id, name, status, kind, list_id, event,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO automation_versions (automation_id, version, definition) VALUES ($1, 1, $2)",
        automation_id,
        definition.dump(),
    )
    found = await get(db, automation_id)
    assert found is not None
    return found


async def get(db: Executor, automation_id: UUID) -> Row | None:
    record = await db.fetchrow(f"{_SELECT} WHERE a.id = $1", automation_id)  # noqa: S608
    return dict(record) if record is not None else None


async def page(db: Executor, cursor: str | None, limit: int) -> tuple[list[Row], str | None]:
    select = f"SELECT * FROM ({_SELECT}) AS a"  # noqa: S608
    return await _page(db, select, [], [], cursor, limit)


async def update(
    db: Executor, automation_id: UUID, name: str | None, definition: Definition | None
) -> Row | None:
    """Rename, and/or add a version (locked: two edits never take one version number)."""
    current = await db.fetchrow(
        "SELECT version FROM automations WHERE id = $1 FOR UPDATE", automation_id
    )
    if current is None:
        return None
    version = current["version"]
    if definition is not None:
        version += 1
        kind, list_id, event = _trigger_columns(definition)
        await db.execute(
            "INSERT INTO automation_versions (automation_id, version, definition)"
            " VALUES ($1, $2, $3)",
            automation_id, version, definition.dump(),
        )  # fmt: skip
        await db.execute(
            "UPDATE automations SET trigger_kind = $2, trigger_list_id = $3, trigger_event = $4"
            " WHERE id = $1",
            automation_id, kind, list_id, event,
        )  # fmt: skip
    await db.execute(
        "UPDATE automations SET name = COALESCE($2, name), version = $3, updated_at = now()"
        " WHERE id = $1",
        automation_id,
        name,
        version,
    )
    return await get(db, automation_id)


async def set_status(db: Executor, automation_id: UUID, status: str) -> Row | None:
    done = await db.fetchval(
        "UPDATE automations SET status = $2, updated_at = now() WHERE id = $1 RETURNING 1",
        automation_id,
        status,
    )
    return await get(db, automation_id) if done else None


async def run_counts(db: Executor, automation_id: UUID) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM automation_runs WHERE automation_id = $1"
        " GROUP BY status",
        automation_id,
    )
    return {r["status"]: int(r["n"]) for r in rows}


async def step_stats(db: Executor, automation_id: UUID) -> list[Row]:
    rows = await db.fetch(
        """
        SELECT r.version, s.step, count(*) AS sent,
               count(*) FILTER (WHERE EXISTS (SELECT 1 FROM delivery_events e
                   WHERE e.campaign_id = s.message_id AND e.event IN ('open', 'click'))) AS opened,
               count(*) FILTER (WHERE EXISTS (SELECT 1 FROM delivery_events e
                   WHERE e.campaign_id = s.message_id AND e.event = 'click')) AS clicked,
               count(*) FILTER (WHERE r.goal_at IS NOT NULL) AS goal
          FROM automation_steps s JOIN automation_runs r ON r.id = s.run_id
         WHERE r.automation_id = $1 AND s.outcome = 'sent'
         GROUP BY r.version, s.step ORDER BY r.version, s.step
        """,
        automation_id,
    )
    return [dict(r) for r in rows]


async def page_runs(
    db: Executor, automation_id: UUID, status: str | None, after: int, limit: int
) -> list[Row]:
    rows = await db.fetch(
        f"SELECT {_RUN_COLUMNS} FROM automation_runs WHERE automation_id = $1"  # noqa: S608
        " AND ($2::text IS NULL OR status = $2) AND id > $3 ORDER BY id LIMIT $4",
        automation_id,
        status,
        after,
        limit,
    )
    return [dict(r) for r in rows]


async def get_run(db: Executor, automation_id: UUID, run_id: int) -> Row | None:
    record = await db.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM automation_runs WHERE automation_id = $1 AND id = $2",  # noqa: S608
        automation_id,
        run_id,
    )
    if record is None:
        return None
    run: dict[str, Any] = dict(record)
    steps = await db.fetch(
        "SELECT step, kind, outcome, message_id, done_at FROM automation_steps"
        " WHERE run_id = $1 ORDER BY step",
        run_id,
    )
    run["steps"] = [dict(s) for s in steps]
    return run
