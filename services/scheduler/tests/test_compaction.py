"""Issue 16 item 2: the batch plan of a finished campaign is dropped once the tracker has
accounted for every batch, and only then (a batch not accounted for may still travel
again, and erasure waits on it)."""

from __future__ import annotations

import uuid

import asyncpg

from services.scheduler.compaction import compact_finished_plans


async def campaign_with_plan(pool: asyncpg.Pool, status: str, batches: int) -> uuid.UUID:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('compact') RETURNING id")
    campaign_id: uuid.UUID = await pool.fetchval(
        """
        INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status)
        VALUES ('c', 'Hi', '<p>x</p>', 'f@example.com', $1, 'sink', $2) RETURNING id
        """,
        list_id,
        status,
    )
    await pool.executemany(
        "INSERT INTO batch_plans (batch_id, campaign_id, batch_no, recipient_ids, emitted)"
        " VALUES ($1, $2, $3, $4, 1)",
        [(f"{campaign_id}:{n}", campaign_id, n, [n * 10 + 1, n * 10 + 2]) for n in range(batches)],
    )
    return campaign_id


async def account(pool: asyncpg.Pool, campaign_id: uuid.UUID, batch_nos: range) -> None:
    await pool.executemany(
        "INSERT INTO tracker_batches (batch_id, campaign_id, recipients) VALUES ($1, $2, 2)",
        [(f"{campaign_id}:{n}", campaign_id) for n in batch_nos],
    )


async def plan_rows(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM batch_plans WHERE campaign_id = $1", campaign_id
    )
    return n


async def test_only_finished_and_fully_accounted_plans_are_dropped(pool: asyncpg.Pool) -> None:
    done = await campaign_with_plan(pool, "completed", 3)
    await account(pool, done, range(3))
    cancelled = await campaign_with_plan(pool, "cancelled", 3)
    await account(pool, cancelled, range(2))  # batch 2 emitted, not accounted yet
    running = await campaign_with_plan(pool, "in_progress", 2)
    await account(pool, running, range(2))

    await compact_finished_plans(pool)  # kept for an hour after the campaign ended
    assert await plan_rows(pool, done) == 3
    await compact_finished_plans(pool, keep_after_finish_s=0)
    assert await plan_rows(pool, done) == 0
    assert await plan_rows(pool, cancelled) == 3
    assert await plan_rows(pool, running) == 2
    # What erasure waits on (an emitted batch not accounted for) is still there to see.
    busy = await pool.fetchval(
        "SELECT count(*) FROM batch_plans b WHERE b.campaign_id = $1 AND b.emitted > 0"
        " AND NOT EXISTS (SELECT 1 FROM tracker_batches t WHERE t.batch_id = b.batch_id)",
        cancelled,
    )
    assert busy == 1

    await account(pool, cancelled, range(2, 3))
    await compact_finished_plans(pool, keep_after_finish_s=0)
    assert await plan_rows(pool, cancelled) == 0
    assert await plan_rows(pool, running) == 2
