"""What `recipients.import_id` (migration 0029) costs an import: a binary COPY of 200,000
rows into a table like `recipients`, and the upsert of the same rows (every one an update),
with and without the column whose default reads `mailfleet.import_id`; 5 rounds, medians.

    .venv/bin/python bench/experiments/import_id_default.py [DSN of a server]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid

import asyncpg

SERVER = sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"


async def main() -> None:
    admin = await asyncpg.connect(SERVER)
    name = f"auto_micro_{uuid.uuid4().hex[:6]}"
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(SERVER.rsplit("/", 1)[0] + f"/{name}")
    base = (
        "(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, list_id uuid NOT NULL,"
        " email text COLLATE \"C\" NOT NULL, fields jsonb NOT NULL DEFAULT '{}',"
        " created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now()"
    )
    await conn.execute(f"CREATE TABLE plain {base})")
    await conn.execute(
        f"CREATE TABLE withcol {base}, import_id uuid DEFAULT NULLIF(current_setting('mailfleet.import_id', true), '')::uuid)"
    )
    for t in ("plain", "withcol"):
        await conn.execute(f"CREATE UNIQUE INDEX ON {t} (list_id, email)")
    rows = [
        (uuid.uuid4(), f"p{i}@example.com", '{"first_name": "A", "city": "B"}')
        for i in range(200_000)
    ]
    times: dict[str, list[float]] = {"plain": [], "withcol": []}
    for _ in range(5):
        for t in ("plain", "withcol"):
            lid = uuid.uuid4()
            data = [(lid, e, f) for _, e, f in rows]
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('mailfleet.import_id', $1, true)", str(uuid.uuid4())
                )
                start = time.perf_counter()
                await conn.copy_records_to_table(
                    t, records=data, columns=["list_id", "email", "fields"]
                )
                times[t].append(time.perf_counter() - start)
            # upsert path: every row an update
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('mailfleet.import_id', $1, true)", str(uuid.uuid4())
                )
                await conn.execute(
                    'CREATE TEMP TABLE s (list_id uuid, email text COLLATE "C", fields jsonb) ON COMMIT DROP'
                )
                await conn.copy_records_to_table(
                    "s", records=data, columns=["list_id", "email", "fields"]
                )
                start = time.perf_counter()
                await conn.execute(
                    f"INSERT INTO {t} (list_id, email, fields) SELECT * FROM s"  # noqa: S608 - constant names
                    f" ORDER BY email ON CONFLICT (list_id, email) DO UPDATE"
                    f" SET fields = {t}.fields || EXCLUDED.fields, updated_at = now()"
                )
                times.setdefault(t + "_upsert", []).append(time.perf_counter() - start)
    for k, v in times.items():
        print(f"{k:16} median {statistics.median(v):.3f} s  all {[round(x, 3) for x in v]}")
    await conn.close()
    await admin.execute(f"DROP DATABASE {name}")
    await admin.close()


asyncio.run(main())
