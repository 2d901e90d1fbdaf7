"""PostgreSQL access for templates and their versions (tables of the API, migration 0006)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from services.api.repository import Executor, Row, _page
from services.api.seq_cursor import decode_seq_cursor, encode_seq_cursor

CONTENT_PARTS = ("subject", "html", "text")
_SUMMARY = "SELECT id, name, description, latest_version, created_at, updated_at FROM templates"
_WITH_CONTENT = (
    "SELECT t.id, t.name, t.description, t.latest_version, t.created_at, t.updated_at,"
    " v.version, v.subject, v.html, v.text, v.created_at AS version_created_at"
    " FROM templates t JOIN template_versions v ON v.template_id = t.id"
)
_VERSION = "SELECT template_id, version, subject, html, text, created_at FROM template_versions"


async def insert_template(db: Executor, name: str, description: str | None, content: Row) -> Row:
    """The template and its version 1, in one statement (so in one transaction)."""
    record = await db.fetchrow(
        "WITH t AS (INSERT INTO templates (name, description) VALUES ($1, $2) RETURNING *),"
        " v AS (INSERT INTO template_versions (template_id, version, subject, html, text)"
        "  SELECT id, 1, $3, $4, $5 FROM t RETURNING *)"
        " SELECT t.id, t.name, t.description, t.latest_version, t.created_at, t.updated_at,"
        " v.version, v.subject, v.html, v.text, v.created_at AS version_created_at"
        " FROM t, v",
        name,
        description,
        content["subject"],
        content["html"],
        content.get("text"),
    )
    assert record is not None
    return dict(record)


async def get_template(db: Executor, template_id: UUID, version: int | None = None) -> Row | None:
    """The template with the content of `version` (default: the latest)."""
    record = await db.fetchrow(
        _WITH_CONTENT + " WHERE t.id = $1 AND v.version = coalesce($2, t.latest_version)",
        template_id,
        version,
    )
    return dict(record) if record is not None else None


async def template_exists(db: Executor, template_id: UUID) -> bool:
    return bool(
        await db.fetchval("SELECT EXISTS (SELECT 1 FROM templates WHERE id = $1)", template_id)
    )


async def page_templates(
    db: Executor, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    return await _page(db, _SUMMARY, [], [], cursor, limit)


def _content_changed(current: Row, changes: Row) -> bool:
    return any(part in changes and changes[part] != current[part] for part in CONTENT_PARTS)


async def update_template(db: Executor, template_id: UUID, changes: Row) -> Row | None:
    """Rename in place; new content becomes a new version (the parts not given are carried
    over from the latest). Call inside a transaction: the row lock orders concurrent edits."""
    current = await db.fetchrow(
        _WITH_CONTENT + " WHERE t.id = $1 AND v.version = t.latest_version FOR UPDATE OF t",
        template_id,
    )
    if current is None:
        return None
    version = current["latest_version"]
    if _content_changed(dict(current), changes):
        version += 1
        content = {part: changes.get(part, current[part]) for part in CONTENT_PARTS}
        await db.execute(
            "INSERT INTO template_versions (template_id, version, subject, html, text)"
            " VALUES ($1, $2, $3, $4, $5)",
            template_id,
            version,
            content["subject"],
            content["html"],
            content["text"],
        )
    await db.execute(
        "UPDATE templates SET name = $2, description = $3, latest_version = $4,"
        " updated_at = now() WHERE id = $1",
        template_id,
        changes.get("name", current["name"]),
        changes["description"] if "description" in changes else current["description"],
        version,
    )
    return await get_template(db, template_id)


async def page_versions(
    db: Executor, template_id: UUID, cursor: str | None, limit: int
) -> tuple[list[Row], str | None]:
    """Versions newest first; raises BadCursor for a cursor this API did not make."""
    args: list[Any] = [template_id]
    where = "WHERE template_id = $1"
    if cursor:
        args.append(decode_seq_cursor(cursor))
        where += " AND version < $2"
    args.append(limit + 1)
    sql = f"{_VERSION} {where} ORDER BY version DESC LIMIT ${len(args)}"  # noqa: S608
    rows = [dict(r) for r in await db.fetch(sql, *args)]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_seq_cursor(rows[-1]["version"])


async def get_version(db: Executor, template_id: UUID, version: int) -> Row | None:
    record = await db.fetchrow(
        _VERSION + " WHERE template_id = $1 AND version = $2", template_id, version
    )
    return dict(record) if record is not None else None


async def delete_template(db: Executor, template_id: UUID) -> bool:
    deleted = await db.fetchval("DELETE FROM templates WHERE id = $1 RETURNING id", template_id)
    return deleted is not None
