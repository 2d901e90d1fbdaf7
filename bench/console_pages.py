"""Console page render times with a large list and delivery log (issue 13: < 200 ms).

    .venv/bin/python bench/console_pages.py [--recipients 1000000] [--deliveries 10000000]

Fills a fresh database (the machine's PostgreSQL, or an embedded one) with one list of
`--recipients` people, 200 campaigns, and one completed campaign whose delivery log holds
`--deliveries` rows (with the tracker's counters and per-batch rows, as the tracker writes
them), then signs in to the console in process (no HTTP server, no broker: the pages only
read) and times each page: median and worst of `--rounds` renders, after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.infra import BenchInfrastructure, machine  # noqa: E402
from libs.common import db  # noqa: E402
from libs.common.logging import configure  # noqa: E402
from libs.common.settings import Settings  # noqa: E402
from services.api.app import create_app  # noqa: E402
from services.api.console import passwords, users_repo  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "bench-password-123"
BATCH = 500
LIMIT_MS = 200.0


async def fill(dsn: str, recipients: int, deliveries: int) -> tuple[uuid.UUID, uuid.UUID]:
    conn = await asyncpg.connect(dsn)
    try:
        list_id = await conn.fetchval("INSERT INTO lists (name) VALUES ('big list') RETURNING id")
        started = time.perf_counter()
        await conn.execute(
            "INSERT INTO recipients (list_id, email, fields) SELECT $1, 'user' || g ||"
            " '@example.com', jsonb_build_object('first_name', 'Name' || g)"
            " FROM generate_series(1, $2) g",
            list_id,
            recipients,
        )
        print(f"  {recipients:,} recipients in {time.perf_counter() - started:.0f} s", flush=True)
        await conn.execute(
            "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
            " created_at) SELECT 'campaign ' || g, 'Hi', '<p>Hi</p>', 'news@example.com', $1,"
            " 'sink', (ARRAY['draft','scheduled','completed','failed','cancelled'])[1 + g % 5],"
            " now() - g * interval '1 minute' FROM generate_series(1, 200) g",
            list_id,
        )
        campaign_id = await conn.fetchval(
            "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
            " started_at, finished_at) VALUES ('the big one', 'Hi', '<p>Hi</p>',"
            " 'news@example.com', $1, 'sink', 'completed', now() - interval '1 hour', now())"
            " RETURNING id",
            list_id,
        )
        started = time.perf_counter()
        # One failure in a hundred; recipient ids repeat past the list size (the log is
        # bigger than the list) but stay unique per campaign as the primary key needs.
        await conn.execute(
            "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id,"
            " sent_at) SELECT $1, g, 'user' || g || '@example.com',"
            " CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'sent' END, 'b' || (g / $3::int),"
            " now() - interval '1 hour' + (g / $3::int) * interval '10 ms'"
            " FROM generate_series(1, $2) g",
            campaign_id,
            deliveries,
            BATCH,
        )
        print(f"  {deliveries:,} deliveries in {time.perf_counter() - started:.0f} s", flush=True)
        await conn.execute(
            "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, batch_no, sent,"
            " failed, started_at, finished_at)"
            " SELECT 'b' || n, $1, $3, n, $3::int - $3::int / 100, $3::int / 100,"
            " now() - interval '1 hour' + n * interval '10 ms',"
            " now() - interval '1 hour' + n * interval '10 ms'"
            " FROM generate_series(0, $2::int / $3::int) n",
            campaign_id,
            deliveries,
            BATCH,
        )
        await conn.execute(
            "INSERT INTO campaign_stats (campaign_id, audience_total, batches_total,"
            " batches_done, sent, failed) VALUES ($1, $2, $3, $3, $4, $5)",
            campaign_id,
            deliveries,
            deliveries // BATCH,
            deliveries - deliveries // 100,
            deliveries // 100,
        )
        await conn.execute("ANALYZE")
        hashed = passwords.hash_password(PASSWORD)
        await users_repo.insert_user(conn, EMAIL, hashed, "admin")
    finally:
        await conn.close()
    return list_id, campaign_id


async def time_pages(dsn: str, pages: list[str], rounds: int) -> list[tuple[str, float, float]]:
    app = create_app(Settings(DATABASE_URL=dsn, KAFKA_BOOTSTRAP_SERVERS="unused:9092"))
    pool = await db.create_pool(dsn, max_size=4)
    app.state.resources.pool = pool  # only reads: no lifespan, no broker
    results = []
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench"
        ) as client:
            login = await client.get("/console/login")
            token = re.search(r'name="csrf_token" value="([^"]*)"', login.text)
            assert token is not None
            signed = await client.post(
                "/console/login",
                data={"email": EMAIL, "password": PASSWORD, "csrf_token": token.group(1)},
            )
            assert signed.status_code == 303, signed.text
            for path in pages:
                assert (await client.get(path)).status_code == 200, path  # warm-up
                times = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    answer = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200
                results.append((path, statistics.median(times), max(times)))
    finally:
        await pool.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    configure("bench", "WARNING")  # one access-log line per render would drown the table
    print(machine())
    with tempfile.TemporaryDirectory() as work:
        infra = BenchInfrastructure(Path(work))
        _, dsn = await infra.start()
        try:
            print("filling the database …", flush=True)
            list_id, campaign_id = await fill(dsn, args.recipients, args.deliveries)
            pages = [
                "/console",
                "/console/campaigns",
                "/console/campaigns?status=completed&q=campaign",
                f"/console/campaigns/{campaign_id}",
                f"/console/campaigns/{campaign_id}?delivery_status=failed",
                f"/console/campaigns/{campaign_id}/timeline.json",
                "/console/lists",
                f"/console/lists/{list_id}",
                f"/console/lists/{list_id}?email=user999999%40example.com",
            ]
            results = await time_pages(dsn, pages, args.rounds)
        finally:
            await infra.drop_database()
            infra.stop()
    print(f"\n{args.recipients:,} recipients, {args.deliveries:,} deliveries, {args.rounds} rounds")
    print(f"{'page':<70} {'median ms':>10} {'max ms':>8}")
    for path, median, worst in results:
        flag = "" if median < LIMIT_MS else "  over 200 ms"
        print(f"{path:<70} {median:>10.1f} {worst:>8.1f}{flag}")


if __name__ == "__main__":
    asyncio.run(main())
