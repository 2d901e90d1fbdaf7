"""Planning time of a campaign by the scheduler (issue 15 item 2: audiences must not slow the
plan of a one-list campaign down).

    .venv/bin/python bench/plan_audience.py [--recipients 1000000] [--rounds 3]

Fills a fresh database (the machine's PostgreSQL, or $MAILFLEET_TEST_DATABASE_URL's) with a list of
`--recipients` people (1 % of them suppressed) and a second list holding a tenth of them
plus as many others, then times `ScheduleRepository.claim_and_plan` (count, byte-sized cut,
batch plan insert; one transaction) of a fresh campaign each round:
- `one list`: a campaign of the big list (`list_id` only: the form every version knows);
- `two lists - segment` (only where the code knows audiences): both lists, minus a segment
  matching a tenth of the big list (`city` = Pune).
The code measured is whichever `services.scheduler` is first on the path: run it with
PYTHONPATH=<another checkout> to measure that checkout (the "before" of a change); or
`--baseline <checkout>/services/scheduler/repository.py` to time that checkout's plan of
the one-list campaign in alternate rounds with this one's, on the same data.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: see above

from bench.infra import machine  # noqa: E402
from libs.common import db  # noqa: E402
from libs.common.embedded import create_database  # noqa: E402
from services.scheduler.repository import ScheduleRepository  # noqa: E402

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
ADMIN_DSN = os.environ.get(
    "MAILFLEET_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def fill(conn: Connection, recipients: int) -> tuple[uuid.UUID, uuid.UUID]:
    big = await conn.fetchval("INSERT INTO lists (name) VALUES ('big') RETURNING id")
    small = await conn.fetchval("INSERT INTO lists (name) VALUES ('small') RETURNING id")
    await conn.execute(
        "INSERT INTO recipients (list_id, email, fields) SELECT $1, 'user' || g ||"
        " '@example.com', jsonb_build_object('first_name', 'Name' || g,"
        " 'city', (ARRAY['Pune','Mumbai','Paris','Berlin','Lagos','Lima','Oslo','Quito',"
        "'Hanoi','Doha'])[1 + g % 10]) FROM generate_series(1, $2) g",
        big,
        recipients,
    )
    await conn.execute(
        "INSERT INTO recipients (list_id, email, fields) SELECT $1::uuid, 'user' || g ||"
        " '@example.com', jsonb_build_object('first_name', 'Small' || g)"
        " FROM generate_series(1, $2, 10) g UNION ALL SELECT $1::uuid, 'other' || g ||"
        " '@example.com', '{}'::jsonb FROM generate_series(1, $2 / 10) g",
        small,
        recipients,
    )
    await conn.execute(
        "INSERT INTO suppressions (email, reason) SELECT 'user' || g || '@example.com',"
        " 'unsubscribe' FROM generate_series(1, $1, 100) g",
        recipients,
    )
    await conn.execute("ANALYZE")
    return big, small


async def new_campaign(
    conn: Connection, list_id: uuid.UUID, audience: dict[str, object] | None = None
) -> uuid.UUID:
    campaign_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " send_at) VALUES ('bench', 's', '<p>x</p>', 'f@example.com', $1, 'sink', 'scheduled',"
        " now()) RETURNING id",
        list_id,
    )
    if audience is not None:
        await conn.execute(
            "UPDATE campaigns SET audience = $2, audience_filters = $3 WHERE id = $1",
            campaign_id,
            {k: v for k, v in audience.items() if k != "filters"},
            audience["filters"],
        )
    return campaign_id


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("baseline_repository", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.ScheduleRepository


async def compare(
    conn: Connection, pool: asyncpg.Pool, repo: Any, baseline: Any, big: uuid.UUID, rounds: int
) -> None:
    times: dict[str, list[float]] = {"baseline": [], "this": []}
    for _ in range(rounds):
        for label, which in (("baseline", baseline(pool)), ("this", repo)):
            campaign_id = await new_campaign(conn, big)
            started = time.perf_counter()
            assert await which.claim_and_plan(campaign_id, 1000) is not None
            times[label].append(time.perf_counter() - started)
    for label, each in times.items():
        print(
            f"one list, {label} (alternate rounds): plan {statistics.median(each):.2f} s"
            f" median of {', '.join(f'{t:.2f}' for t in each)}",
            flush=True,
        )


async def count_before_planning(
    conn: Connection, cases: dict[str, dict[str, object] | None], rounds: int
) -> None:
    """What reading a draft costs: the API's count of its audience (`build_count`)."""
    from libs.common import audience as audiences  # only where the code knows audiences
    from libs.common import segments

    for label, definition in cases.items():
        if definition is None:
            continue
        audience = audiences.parse({k: v for k, v in definition.items() if k != "filters"})
        raw = definition["filters"]
        assert isinstance(raw, dict)
        filters = {uuid.UUID(k): segments.parse(v) for k, v in raw.items()}
        built = audiences.build_count(audience, filters, now=datetime.now(UTC))
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            value = await conn.fetchval(built.sql, *built.params)
            times.append(time.perf_counter() - started)
        print(
            f"{label}: count before planning {value}, {statistics.median(times):.2f} s median",
            flush=True,
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout's services/scheduler/repository.py: its plan of the one-list"
        " campaign is timed too, in alternate rounds on the same data (a fair before/after"
        " on a machine whose load changes)",
    )
    args = parser.parse_args()
    print(f"plan_audience: {args.recipients} recipients; {machine()}", flush=True)
    name = f"mailfleet_bench_{uuid.uuid4().hex[:8]}"
    dsn = await create_database(ADMIN_DSN, name)
    try:
        await db.migrate(dsn)
        pool = await db.create_pool(dsn, max_size=2)
        conn = await pool.acquire()
        try:
            big, small = await fill(conn, args.recipients)
            has_audience = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
                " WHERE table_name = 'campaigns' AND column_name = 'audience')"
            )
            repo = ScheduleRepository(pool)
            if args.baseline is not None:
                await compare(conn, pool, repo, _load(args.baseline), big, args.rounds)
            cases: dict[str, dict[str, object] | None] = {"one list": None}
            if has_audience:
                segment = str(uuid.uuid4())
                cases["two lists - segment"] = {
                    "lists": [str(big), str(small)],
                    "exclude_segments": [segment],
                    "filters": {segment: {"field": "city", "op": "eq", "value": "Pune"}},
                }
            for label, audience in cases.items():
                times = []
                plan = None
                for _ in range(args.rounds):
                    campaign_id = await new_campaign(conn, big, audience)
                    started = time.perf_counter()
                    plan = await repo.claim_and_plan(campaign_id, 1000)
                    times.append(time.perf_counter() - started)
                assert plan is not None
                print(
                    f"{label}: audience {plan.audience_total}, suppressed"
                    f" {plan.suppressed_total}, batches {plan.batches_total};"
                    f" plan {statistics.median(times):.2f} s median of"
                    f" {', '.join(f'{t:.2f}' for t in times)}",
                    flush=True,
                )
            if has_audience:
                await count_before_planning(conn, cases, args.rounds)
        finally:
            await pool.release(conn)
            await pool.close()
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
