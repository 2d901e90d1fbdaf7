"""Segment counts on a large list (issue 15: `GET /api/v1/segments/{id}/count` under 1 s on
1M recipients).

    .venv/bin/python bench/segment_count.py [--recipients 1000000] [--campaigns 3] [--rounds 5]

Fills a fresh database (the machine's PostgreSQL, or an embedded one) with one list of
`--recipients` people (merge fields city, age, signup date), a second list holding a tenth
of them, 2 % suppressed, and `--campaigns` completed campaigns that each mailed the whole
list (their delivery log: opens for a fifth, clicks for a twentieth, soft bounces for one
in a hundred), then saves segments through the API and times their count endpoint in
process (no HTTP server, no broker: counting only reads). Baseline, measured in the same
run: a plain `count(*)` of the list, and `count(DISTINCT email)` of the list.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.infra import BenchInfrastructure, machine  # noqa: E402
from libs.common import db  # noqa: E402
from libs.common.logging import configure  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from libs.stats import engagement  # noqa: E402
from services.api.app import create_app  # noqa: E402
from services.api.keys import hash_key  # noqa: E402

LIMIT_MS = 1000.0
KEY = f"mf_bench_{uuid.uuid4().hex}"


async def fill(dsn: str, recipients: int, campaigns: int) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    conn = await asyncpg.connect(dsn, command_timeout=3600)
    try:
        big = await conn.fetchval("INSERT INTO lists (name) VALUES ('big') RETURNING id")
        small = await conn.fetchval("INSERT INTO lists (name) VALUES ('vip') RETURNING id")
        started = time.perf_counter()
        await conn.execute(
            "INSERT INTO recipients (list_id, email, fields) SELECT $1, 'user' || g ||"
            " '@example.com', jsonb_build_object('first_name', 'Name' || g,"
            " 'city', (ARRAY['Pune','Mumbai','Paris','Berlin','Lagos','Lima','Oslo','Quito',"
            "'Hanoi','Doha'])[1 + g % 10], 'age', (18 + g % 60)::text,"
            " 'signup', to_char(date '2020-01-01' + (g % 2000), 'YYYY-MM-DD'))"
            " FROM generate_series(1, $2) g",
            big,
            recipients,
        )
        await conn.execute(
            "INSERT INTO recipients (list_id, email, fields) SELECT $1, 'user' || g ||"
            " '@example.com', '{}'::jsonb FROM generate_series(1, $2, 10) g",
            small,
            recipients,
        )
        await conn.execute(
            "INSERT INTO suppressions (email, reason) SELECT 'user' || g || '@example.com',"
            " 'unsubscribe' FROM generate_series(1, $1, 50) g",
            recipients,
        )
        print(f"  {recipients:,} recipients in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        first_campaign = None
        for n in range(campaigns):
            days_ago = [60, 10, 1][n % 3] + n // 3
            campaign = await conn.fetchval(
                "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider,"
                " status, started_at, finished_at) VALUES ($1, 'Hi', '<p>Hi</p>',"
                " 'news@example.com', $2, 'sink', 'completed', now() - make_interval(days => $3)"
                " - interval '1 hour', now() - make_interval(days => $3)) RETURNING id",
                f"campaign {n}",
                big,
                days_ago,
            )
            first_campaign = first_campaign or campaign
            await conn.execute(
                "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id,"
                " sent_at, opened_at, clicked_at, bounced_at, bounce_type)"
                " SELECT $1, r.id, r.email, 'sent', 'b' || (r.id / 500), t.sent,"
                " CASE WHEN t.h % 5 = 0 THEN t.sent + interval '2 hours' END,"
                " CASE WHEN t.h % 20 = 0 THEN t.sent + interval '3 hours' END,"
                " CASE WHEN t.h % 100 = 1 THEN t.sent + interval '1 hour' END,"
                " CASE WHEN t.h % 100 = 1 THEN 'soft' END"
                " FROM recipients r,"
                " LATERAL (SELECT now() - make_interval(days => $2) - interval '30 minutes' AS sent,"
                " abs(hashtext(r.email || $3::text)) AS h) t"
                " WHERE r.list_id = $4",
                campaign,
                days_ago,
                str(n),
                big,
            )
            # Over, every batch accounted for: the tracker's job summarises its sends.
            await conn.execute("INSERT INTO campaign_stats (campaign_id) VALUES ($1)", campaign)
        print(
            f"  {campaigns * recipients:,} deliveries in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        started = time.perf_counter()
        summarised = 0
        for _ in range(campaigns):
            async with conn.transaction():
                summarised += await engagement.summarise_next_campaign(conn) is not None
        print(
            f"  engagement summary of {summarised} campaigns (the tracker's job)"
            f" in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        await conn.execute(
            "INSERT INTO api_keys (name, role, key_prefix, key_hash) VALUES ('bench', 'admin',"
            " 'mf_bench', $1)",
            hash_key(KEY),
        )
        await conn.execute("VACUUM ANALYZE")
        assert first_campaign is not None
        return big, small, first_campaign
    finally:
        await conn.close()


def segments_to_time(big: uuid.UUID, small: uuid.UUID, campaign: uuid.UUID) -> dict[str, Any]:
    return {
        "the whole list": {"list": str(big)},
        "city = Pune": {"field": "city", "op": "eq", "value": "Pune"},
        "city in (3) and age >= 40": {
            "and": [
                {"field": "city", "op": "in", "value": ["Pune", "Lima", "Oslo"]},
                {"field": "age", "op": "gte", "value": 40},
            ]
        },
        "signup after 2024-06-01, name starts with 'name1'": {
            "and": [
                {"field": "signup", "op": "gt", "value": "2024-06-01"},
                {"field": "first_name", "op": "starts_with", "value": "name1"},
            ]
        },
        "opened within 30 days": {"engaged": "opened", "within_days": 30},
        "the issue's example (Pune, opened within 30 days)": {
            "and": [
                {"field": "city", "op": "eq", "value": "Pune"},
                {"engaged": "opened", "within_days": 30},
            ]
        },
        "on list, not VIP, not suppressed, received within 30 days": {
            "and": [
                {"list": str(big)},
                {"not": {"list": str(small)}},
                {"suppressed": False},
                {"engaged": "received", "within_days": 30},
            ]
        },
        "never opened within 90 days": {"never": "opened", "within_days": 90},
        "clicked campaign 0 or soft-bounced, or city contains 'er'": {
            "or": [
                {"engaged": "clicked", "campaign": str(campaign)},
                {"engaged": "soft_bounced"},
                {"field": "city", "op": "contains", "value": "ER"},
            ]
        },
    }


async def time_counts(
    dsn: str, segments: dict[str, Any], big: uuid.UUID, rounds: int
) -> tuple[list[tuple[str, int, float, float]], list[tuple[str, int, float, float]]]:
    app = create_app(Settings(DATABASE_URL=dsn, KAFKA_BOOTSTRAP_SERVERS="unused:9092"))
    pool = await db.create_pool(dsn, max_size=4)
    app.state.resources.pool = pool  # only reads and saves: no lifespan, no broker
    headers = {"Authorization": f"Bearer {KEY}"}
    results = []
    baseline = []
    try:
        for name, sql in (
            (
                "baseline: count(*) of the list",
                "SELECT count(*) FROM recipients WHERE list_id = $1",
            ),
            (
                "baseline: count(DISTINCT email) of the list",
                "SELECT count(DISTINCT email) FROM recipients WHERE list_id = $1",
            ),
        ):
            await pool.fetchval(sql, big)  # warm-up
            times, value = [], 0
            for _ in range(rounds):
                started = time.perf_counter()
                value = await pool.fetchval(sql, big)
                times.append((time.perf_counter() - started) * 1000)
            baseline.append((name, int(value), statistics.median(times), max(times)))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=120
        ) as client:
            for name, filter_ in segments.items():
                saved = await client.post(
                    "/api/v1/segments", json={"name": name, "filter": filter_}, headers=headers
                )
                assert saved.status_code == 201, saved.text
                path = f"/api/v1/segments/{saved.json()['id']}/count"
                assert (await client.get(path, headers=headers)).status_code == 200  # warm-up
                times, value = [], 0
                for _ in range(rounds):
                    started = time.perf_counter()
                    answer = await client.get(path, headers=headers)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, answer.text
                    value = answer.json()["count"]
                results.append((name, value, statistics.median(times), max(times)))
    finally:
        await pool.close()
    return baseline, results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--campaigns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure("bench", "WARNING")
    print(machine())
    with tempfile.TemporaryDirectory() as work:
        infra = BenchInfrastructure(Path(work))
        _, dsn = await infra.start()
        try:
            print("filling the database …", flush=True)
            big, small, campaign = await fill(dsn, args.recipients, args.campaigns)
            conn = await asyncpg.connect(dsn)
            version = await conn.fetchval("SHOW server_version")
            await conn.close()
            baseline, results = await time_counts(
                dsn, segments_to_time(big, small, campaign), big, args.rounds
            )
        finally:
            await infra.drop_database()
            infra.stop()
    print(
        f"\nPostgreSQL {version}; {args.recipients:,} recipients,"
        f" {args.campaigns * args.recipients:,} deliveries, {args.rounds} rounds"
    )
    print(f"{'what':<62} {'count':>9} {'median ms':>10} {'max ms':>8}")
    for name, value, median, worst in baseline + results:
        flag = "" if median < LIMIT_MS else "  over 1 s"
        print(f"{name:<62} {value:>9,} {median:>10.1f} {worst:>8.1f}{flag}")


if __name__ == "__main__":
    asyncio.run(main())
