"""A list's size comes from the changes its writers append (issue 16 item 3: no COUNT(*)
over recipients in a request path), and stays exact through inserts, COPY, upserts,
deletes and the fold of many change rows into one."""

from __future__ import annotations

import uuid

import asyncpg

from services.api import repository


async def counted(pool: asyncpg.Pool, list_id: uuid.UUID) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM recipients WHERE list_id = $1", list_id)
    return n


async def test_the_list_size_follows_every_writer(pool: asyncpg.Pool) -> None:
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('counted') RETURNING id")
    other = await pool.fetchval("INSERT INTO lists (name) VALUES ('other') RETURNING id")
    assert await repository.recipient_count(pool, list_id) == 0
    # COPY (as the importer loads), then one-by-one inserts (as the API adds).
    await pool.copy_records_to_table(
        "recipients",
        records=[(list_id, f"c{i}@count.example.com", {}) for i in range(500)]
        + [(other, f"c{i}@count.example.com", {}) for i in range(7)],
        columns=["list_id", "email", "fields"],
    )
    for i in range(100):  # more change rows than a read keeps apart: folded on the way
        await pool.execute(
            "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, '{}')",
            list_id,
            f"a{i}@count.example.com",
        )
    assert await repository.recipient_count(pool, list_id) == 600 == await counted(pool, list_id)
    rows = await pool.fetchval(
        "SELECT count(*) FROM list_recipient_counts WHERE list_id = $1", list_id
    )
    assert rows == 1  # the read folded them
    # An upsert that only updates adds nothing; deletes subtract.
    await pool.execute(
        "INSERT INTO recipients (list_id, email, fields) VALUES ($1, 'a1@count.example.com', '{}')"
        " ON CONFLICT (list_id, email) DO UPDATE SET fields = EXCLUDED.fields",
        list_id,
    )
    await pool.execute("DELETE FROM recipients WHERE list_id = $1 AND email LIKE 'c1%'", list_id)
    assert await repository.recipient_count(pool, list_id) == await counted(pool, list_id) == 489
    assert await repository.recipient_count(pool, other) == 7
    # Deleting the list deletes its recipients (a trigger): the size follows.
    await pool.execute("DELETE FROM lists WHERE id = $1", other)
    assert await repository.recipient_count(pool, other) == 0
