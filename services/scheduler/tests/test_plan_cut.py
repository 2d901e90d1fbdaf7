"""The plan's two cuts against the real PostgreSQL: by count when a full batch of the
largest recipient fits the event's budget, else by the running sum of sizes."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from libs.common.sendtime import earliest_instant
from services.scheduler.planner import ENVELOPE_BYTES, cut_by_count
from services.scheduler.repository import ScheduleRepository
from services.scheduler.tests.test_batch_bytes import seed

DAY_NINE = datetime(2027, 3, 14, 9, 0)


async def planned(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> list[asyncpg.Record]:
    """Each batch in batch_no order, with its recipients' zones and event size."""
    return await pool.fetch(
        """
        SELECT b.batch_no, b.zone, b.recipient_ids,
               (SELECT array_agg(DISTINCT r.fields->>'timezone') FROM recipients r
                 WHERE r.id = ANY(b.recipient_ids)) AS fields_zones,
               (SELECT sum(octet_length(r.email) + octet_length(r.fields::text) + 64)
                  FROM recipients r WHERE r.id = ANY(b.recipient_ids)) AS bytes
          FROM batch_plans b WHERE b.campaign_id = $1 ORDER BY b.batch_no
        """,
        campaign_id,
    )


async def audience_ids(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> list[int]:
    return [
        r["id"]
        for r in await pool.fetch(
            "SELECT r.id FROM recipients r JOIN campaigns c ON c.list_id = r.list_id"
            " WHERE c.id = $1 AND NOT EXISTS (SELECT 1 FROM suppressions s"
            " WHERE s.email = r.email) ORDER BY r.id",
            campaign_id,
        )
    ]


def test_a_full_batch_of_the_largest_recipient_decides_the_cut() -> None:
    assert cut_by_count(1000, 500, 500_000)
    assert not cut_by_count(1000, 501, 500_000)


async def test_small_recipients_are_cut_by_count_into_full_batches_in_id_order(
    pool: asyncpg.Pool,
) -> None:
    campaign_id = await seed(pool, [{"first_name": f"N{i}"} for i in range(2_503)])
    emails = await pool.fetch(
        "SELECT r.email FROM recipients r JOIN campaigns c ON c.list_id = r.list_id"
        " WHERE c.id = $1 ORDER BY r.id LIMIT 3",
        campaign_id,
    )
    await pool.executemany(
        "INSERT INTO suppressions (email, reason) VALUES ($1, 'unsubscribe')",
        [(r["email"],) for r in emails],
    )
    plan = await ScheduleRepository(pool).claim_and_plan(campaign_id, 1000)
    assert plan is not None
    assert (plan.audience_total, plan.suppressed_total, plan.batches_total) == (2_503, 3, 3)
    rows = await planned(pool, campaign_id)
    assert [r["batch_no"] for r in rows] == [0, 1, 2]
    assert [len(r["recipient_ids"]) for r in rows] == [1000, 1000, 500]
    assert [i for r in rows for i in r["recipient_ids"]] == await audience_ids(pool, campaign_id)
    assert all(r["zone"] is None for r in rows)


async def test_large_recipients_of_a_zoned_plan_are_cut_by_bytes_within_each_zone(
    pool: asyncpg.Pool,
) -> None:
    zones = ["Asia/Tokyo", "America/New_York"]
    fields = [{"timezone": zones[i % 2], "notes": "x" * (1000 + i)} for i in range(120)]
    campaign_id = await seed(pool, fields, local_at=DAY_NINE)
    budget = 20_000  # about 18 recipients; by count, 50 would not fit
    plan = await ScheduleRepository(pool).claim_and_plan(
        campaign_id, 50, max_message_bytes=ENVELOPE_BYTES + budget, now=earliest_instant(DAY_NINE)
    )
    assert plan is not None
    rows = await planned(pool, campaign_id)
    assert plan.batches_total == len(rows) >= 120 * 1000 // budget
    for row in rows:
        assert row["fields_zones"] == [row["zone"]]  # one zone per batch
        assert row["bytes"] <= budget
        assert row["recipient_ids"] == sorted(row["recipient_ids"])
    # Tokyo's 09:00 comes first: its batches are numbered first.
    assert [r["zone"] for r in rows] == sorted((r["zone"] for r in rows), key=zones.index)
    every = sorted(i for r in rows for i in r["recipient_ids"])
    assert every == await audience_ids(pool, campaign_id)
