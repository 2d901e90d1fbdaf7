"""The ops server's campaign gauges, read from PostgreSQL at scrape time."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from libs.common.embedded import free_port
from libs.common.metrics import CampaignGauges, longest_stall_seconds, start_ops_server


def sample(exposition: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"{name} {labels} not exported")


async def test_campaign_counts_and_the_longest_stall_are_scraped(pool: asyncpg.Pool) -> None:
    list_id = uuid.uuid4()
    stalled = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO lists (id, name) VALUES ($1, 'ops')", list_id)
        # Started two hours ago; its only folded batch was an hour ago: stalled ≥ 1 h.
        await conn.execute(
            "INSERT INTO campaigns (id, name, subject, html, from_email, list_id, provider,"
            " status, started_at) VALUES ($1, 'c', 's', 'h', 'a@example.com', $2, 'sink',"
            " 'in_progress', now() - interval '2 hours')",
            stalled,
            list_id,
        )
        await conn.execute(
            "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, folded_at)"
            " VALUES ($1, $2, 1, now() - interval '1 hour')",
            f"{stalled}:0",
            stalled,
        )
    port = free_port()
    runner = await start_ops_server(
        "127.0.0.1", port, _ready, before_scrape=CampaignGauges(pool).refresh
    )
    try:
        async with httpx.AsyncClient() as http:
            page = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        await runner.cleanup()
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM tracker_batches WHERE campaign_id = $1", stalled)
            await conn.execute("DELETE FROM campaigns WHERE id = $1", stalled)
    # Other tests share the database: at least ours is in progress.
    assert sample(page, "mailfleet_campaigns", status="in_progress") >= 1
    assert sample(page, "mailfleet_campaigns", status="draft") >= 0  # every status is shown
    assert sample(page, "mailfleet_campaign_longest_stall_seconds") >= 3600


async def _ready() -> dict[str, bool]:
    return {"database": True}


async def test_a_local_time_campaign_waiting_for_its_next_zone_is_not_stalled(
    pool: asyncpg.Pool,
) -> None:
    """Issue 17: between two zones' instants nothing is folded for hours; that is waiting,
    not a stuck campaign. Once a batch is due and not folded, the stall counts from when it
    fell due (or the last fold after it)."""
    list_id, waiting, overdue = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO lists (id, name) VALUES ($1, 'ops')", list_id)
        for campaign_id in (waiting, overdue):
            await conn.execute(
                "INSERT INTO campaigns (id, name, subject, html, from_email, list_id, provider,"
                " status, started_at, local_time) VALUES ($1, 'c', 's', 'h', 'a@example.com',"
                " $2, 'sink', 'in_progress', now() - interval '5 hours', true)",
                campaign_id,
                list_id,
            )
            # One zone went 4 hours ago and was folded; the next is due in 3 hours.
            await conn.execute(
                "INSERT INTO batch_plans (batch_id, campaign_id, batch_no, recipient_ids, zone,"
                " due_at, emitted) VALUES ($1 || ':0', $1::uuid, 0, '{1}', 'Asia/Tokyo',"
                " now() - interval '4 hours', 1), ($1 || ':1', $1::uuid, 1, '{2}', 'UTC',"
                " $2, 0)",
                str(campaign_id),
                None,
            )
            await conn.execute(
                "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, folded_at)"
                " VALUES ($1, $2, 1, now() - interval '4 hours')",
                f"{campaign_id}:0",
                campaign_id,
            )
        await conn.execute(
            "UPDATE batch_plans SET due_at = now() + interval '3 hours' WHERE batch_id = $1",
            f"{waiting}:1",
        )
        await conn.execute(
            "UPDATE batch_plans SET due_at = now() - interval '20 minutes' WHERE batch_id = $1",
            f"{overdue}:1",
        )
        try:
            assert await longest_stall_seconds(conn, [waiting]) == 0
            stall = await longest_stall_seconds(conn, [overdue])
            assert 1200 <= stall < 1300  # from when its batch fell due, not 4 h
        finally:
            for campaign_id in (waiting, overdue):
                await conn.execute(
                    "DELETE FROM tracker_batches WHERE campaign_id = $1", campaign_id
                )
                await conn.execute("DELETE FROM batch_plans WHERE campaign_id = $1", campaign_id)
                await conn.execute("DELETE FROM campaigns WHERE id = $1", campaign_id)


async def test_a_capped_campaign_is_given_the_time_its_cap_needs(pool: asyncpg.Pool) -> None:
    """Issue 17 item 4: a campaign at 600 an hour with 1,000 recipients in flight folds a
    batch every hour or two by design; the stall counts only past what its cap needs."""
    list_id, capped = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO lists (id, name) VALUES ($1, 'ops')", list_id)
        await conn.execute(
            "INSERT INTO campaigns (id, name, subject, html, from_email, list_id, provider,"
            " status, started_at, max_per_hour) VALUES ($1, 'c', 's', 'h', 'a@example.com',"
            " $2, 'sink', 'in_progress', now() - interval '2 hours', 600)",
            capped,
            list_id,
        )
        await conn.execute(
            "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, folded_at)"
            " VALUES ($1, $2, 500, now() - interval '1 hour')",
            f"{capped}:0",
            capped,
        )
        await conn.executemany(
            "INSERT INTO batch_plans (batch_id, campaign_id, batch_no, recipient_ids, emitted)"
            " VALUES ($1, $2, $3, $4, 1)",
            [(f"{capped}:{n}", capped, n, list(range(n * 500, n * 500 + 500))) for n in (0, 1, 2)],
        )
        try:
            # An hour since its last fold, 100 minutes of its cap in flight: not stalled.
            assert await longest_stall_seconds(conn, [capped]) == 0
            # At 60,000 an hour the same is 1 minute of its cap: stalled for ~59 minutes.
            await conn.execute("UPDATE campaigns SET max_per_hour = 60000 WHERE id = $1", capped)
            assert 3500 <= await longest_stall_seconds(conn, [capped]) <= 3600
        finally:
            await conn.execute("DELETE FROM batch_plans WHERE campaign_id = $1", capped)
            await conn.execute("DELETE FROM tracker_batches WHERE campaign_id = $1", capped)
            await conn.execute("DELETE FROM campaigns WHERE id = $1", capped)


async def test_an_ab_campaign_waiting_for_its_winner_is_not_stalled(pool: asyncpg.Pool) -> None:
    """Issue 17 item 1: the test group was sent and folded an hour ago, the remainder waits
    for the winner: waiting, not stuck, until the wait ends (or forever for a test decided
    by hand); then the stall counts from the wait's end, and after a decision from it."""
    list_id = uuid.uuid4()
    cases = {  # (wait, metric, decided minutes ago)
        "waiting": (7200, "open", None),
        "manual": (0, "manual", None),
        "overdue": (3000, "open", None),  # 50 min: its wait ended 10 minutes ago
        "decided": (0, "open", 5),
    }
    ids = {name: uuid.uuid4() for name in cases}
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO lists (id, name) VALUES ($1, 'ops ab')", list_id)
        for name, (wait, metric, decided) in cases.items():
            campaign_id = ids[name]
            await conn.execute(
                "INSERT INTO campaigns (id, name, subject, html, from_email, list_id, provider,"
                " status, started_at) VALUES ($1, 'c', 's', 'h', 'a@example.com', $2, 'sink',"
                " 'in_progress', now() - interval '1 hour')",
                campaign_id,
                list_id,
            )
            await conn.execute(
                "INSERT INTO ab_tests (campaign_id, test_share, seed, wait_seconds, metric,"
                " test_started_at, winner, decided_at) VALUES ($1, 0.5, 1, $2, $3,"
                " now() - interval '1 hour', CASE WHEN $4::int IS NOT NULL THEN 'A' END,"
                " now() - make_interval(mins => $4::int))",
                campaign_id,
                wait,
                metric,
                decided,
            )
            await conn.execute(
                "INSERT INTO batch_plans (batch_id, campaign_id, batch_no, recipient_ids,"
                " variant, emitted) VALUES ($1 || ':0', $1::uuid, 0, '{1}', 'A', 1),"
                " ($1 || ':1', $1::uuid, 1, '{2}', NULL, 0)",
                str(campaign_id),
            )
            await conn.execute(
                "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, folded_at)"
                " VALUES ($1, $2, 1, now() - interval '1 hour')",
                f"{campaign_id}:0",
                campaign_id,
            )
        try:
            assert await longest_stall_seconds(conn, [ids["waiting"]]) == 0
            assert await longest_stall_seconds(conn, [ids["manual"]]) == 0
            assert 600 <= await longest_stall_seconds(conn, [ids["overdue"]]) < 700
            assert 300 <= await longest_stall_seconds(conn, [ids["decided"]]) < 400
        finally:
            for campaign_id in ids.values():
                await conn.execute(
                    "DELETE FROM tracker_batches WHERE campaign_id = $1", campaign_id
                )
                await conn.execute("DELETE FROM batch_plans WHERE campaign_id = $1", campaign_id)
                await conn.execute("DELETE FROM campaigns WHERE id = $1", campaign_id)
