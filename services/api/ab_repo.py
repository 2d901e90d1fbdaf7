"""PostgreSQL access for A/B tests (issue 17 item 1): the test's settings and variants
(written by the API while the campaign is editable), the winner (a compare-and-set on
`winner IS NULL` that an admin's pick and the scheduler's decision share), and the
tracker's per-variant counters (read)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from services.api.repository import EDITABLE_STATUSES, Executor, Row


async def lock_campaign(conn: Executor, campaign_id: UUID) -> Row | None:
    """The campaign's row, locked, and touched: a scheduler claiming it meanwhile fails its
    repeatable-read claim and tries again, so it plans with the test as committed."""
    row = await conn.fetchrow(
        "UPDATE campaigns SET updated_at = now() WHERE id = $1"
        " RETURNING id, status, subject, html, text, from_name",
        campaign_id,
    )
    return dict(row) if row is not None else None


def editable(status: str) -> bool:
    return status in EDITABLE_STATUSES


async def replace_test(
    conn: Executor,
    campaign_id: UUID,
    settings: dict[str, Any],
    variants: list[tuple[str, dict[str, Any]]],
) -> None:
    await conn.execute("DELETE FROM ab_tests WHERE campaign_id = $1", campaign_id)
    await conn.execute(
        "INSERT INTO ab_tests (campaign_id, test_share, seed, wait_seconds, metric)"
        " VALUES ($1, $2, $3, $4, $5)",
        campaign_id,
        settings["test_share"],
        settings["seed"],
        settings["wait_seconds"],
        settings["metric"],
    )
    await conn.executemany(
        "INSERT INTO ab_variants (campaign_id, variant, subject, from_name, html, text)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (campaign_id, name, v.get("subject"), v.get("from_name"), v.get("html"), v.get("text"))
            for name, v in variants
        ],
    )


async def copy_test(conn: Executor, source: UUID, target: UUID, seed: int) -> None:
    """Give a duplicated campaign the source's test: settings and variants, not its seed
    (a new draw), its start or its decision."""
    copied = await conn.fetchval(
        """
        INSERT INTO ab_tests (campaign_id, test_share, seed, wait_seconds, metric)
        SELECT $2, test_share, $3, wait_seconds, metric FROM ab_tests WHERE campaign_id = $1
        RETURNING true
        """,
        source,
        target,
        seed,
    )
    if copied:
        await conn.execute(
            """
            INSERT INTO ab_variants (campaign_id, variant, subject, from_name, html, text)
            SELECT $2, variant, subject, from_name, html, text
              FROM ab_variants WHERE campaign_id = $1
            """,
            source,
            target,
        )


async def delete_test(conn: Executor, campaign_id: UUID) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM ab_tests WHERE campaign_id = $1 RETURNING true", campaign_id
    )
    return bool(deleted)


async def get_test(db: Executor, campaign_id: UUID) -> Row | None:
    row = await db.fetchrow("SELECT * FROM ab_tests WHERE campaign_id = $1", campaign_id)
    return dict(row) if row is not None else None


async def variants_of(db: Executor, campaign_id: UUID) -> list[Row]:
    rows = await db.fetch(
        "SELECT variant, subject, from_name, html, text FROM ab_variants"
        " WHERE campaign_id = $1 ORDER BY variant",
        campaign_id,
    )
    return [dict(r) for r in rows]


async def variant_counters(db: Executor, campaign_id: UUID) -> list[Row]:
    """The tracker's counters of each variant (zero for one with nothing folded yet)."""
    rows = await db.fetch(
        """
        SELECT v.variant, s.recipients, s.sent, s.failed, s.delivered, s.bounced,
               s.unique_opens, s.opens, s.unique_clicks, s.clicks, s.unsubscribes
          FROM ab_variants v
          LEFT JOIN campaign_variant_stats s
                 ON s.campaign_id = v.campaign_id AND s.variant = v.variant
         WHERE v.campaign_id = $1
         ORDER BY v.variant
        """,
        campaign_id,
    )
    return [dict(r) for r in rows]


async def update_undecided(
    conn: Executor, campaign_id: UUID, changes: dict[str, Any]
) -> Row | None:
    """Change the wait or metric of a test with no winner yet; None if it has one."""
    row = await conn.fetchrow(
        """
        UPDATE ab_tests
           SET wait_seconds = coalesce($2, wait_seconds), metric = coalesce($3, metric),
               updated_at = now()
         WHERE campaign_id = $1 AND winner IS NULL
        RETURNING *
        """,
        campaign_id,
        changes.get("wait_seconds"),
        changes.get("metric"),
    )
    return dict(row) if row is not None else None


async def choose_winner(
    conn: Executor, campaign_id: UUID, variant: str, by: str, at: datetime
) -> Row | None:
    """Store the winner once: None when one was stored already (by the scheduler, say)."""
    row = await conn.fetchrow(
        """
        UPDATE ab_tests
           SET winner = $2, decided_at = $4, decided_by = $3,
               decision_reason = 'chosen by hand', updated_at = now()
         WHERE campaign_id = $1 AND winner IS NULL
        RETURNING *
        """,
        campaign_id,
        variant,
        by,
        at,
    )
    return dict(row) if row is not None else None
