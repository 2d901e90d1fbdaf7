"""The audience builder against a reference evaluation in Python.

Generated people on four lists (addresses shared between lists, each row with its own
status: active, unconfirmed or unsubscribed, and its own merge fields), some suppressed;
segments over merge fields and list membership. A few hundred random definitions (lists,
segments, exclusion lists and segments) must select exactly the rows the reference
selects: each address once, with the row the documented order picks.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from libs.common import audience as audiences
from libs.common import segments
from libs.common.audience import Audience, AudienceError, build, build_count, parse

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STATUSES = ["active", "active", "active", "active", "unconfirmed", "unsubscribed"]


@dataclass
class Row:
    list_id: uuid.UUID
    email: str
    fields: dict[str, Any]
    status: str


@dataclass
class World:
    tag: str
    lists: list[uuid.UUID]
    rows: dict[int, Row]
    suppressed: set[str]
    filters: dict[uuid.UUID, dict[str, Any]]

    def on_list(self, list_id: uuid.UUID) -> set[str]:
        return {r.email for r in self.rows.values() if r.list_id == list_id}


def _matches(world: World, node: dict[str, Any], row: Row) -> bool:
    """The reference meaning of the few filter nodes these tests use (libs/common/segments)."""
    if "and" in node:
        return all(_matches(world, n, row) for n in node["and"])
    if "or" in node:
        return any(_matches(world, n, row) for n in node["or"])
    if "not" in node:
        return not _matches(world, node["not"], row)
    if "list" in node:
        return row.email in world.on_list(uuid.UUID(node["list"]))
    value = row.fields.get(node["field"])
    if node["op"] == "eq":
        return isinstance(value, str) and value == node["value"]
    assert node["op"] == "in"
    return isinstance(value, str) and value in node["value"]


def reference(world: World, audience: Audience) -> dict[str, tuple[int, bool]]:
    """email -> (the row id mailed, suppressed) for the audience's addresses."""
    excluded: set[str] = set()
    for list_id in audience.exclude_lists:
        excluded |= world.on_list(list_id)
    for segment_id in audience.exclude_segments:
        node = world.filters[segment_id]
        excluded |= {r.email for r in world.rows.values() if _matches(world, node, r)}
    best: dict[str, tuple[int, int]] = {}
    for rid, row in world.rows.items():
        if row.status != "active" or row.email in excluded:
            continue
        ranks = [i for i, list_id in enumerate(audience.lists) if list_id == row.list_id]
        ranks += [
            len(audience.lists) + j
            for j, segment_id in enumerate(audience.segments)
            if _matches(world, world.filters[segment_id], row)
        ]
        if ranks:
            key = (min(ranks), rid)
            if row.email not in best or key < best[row.email]:
                best[row.email] = key
    return {email: (rid, email in world.suppressed) for email, (_, rid) in best.items()}


@pytest.fixture(scope="module")
async def world(pool: asyncpg.Pool) -> World:
    rng = random.Random(26)
    tag = uuid.uuid4().hex[:8]
    lists = [
        await pool.fetchval("INSERT INTO lists (name) VALUES ($1) RETURNING id", f"aud {tag} {i}")
        for i in range(4)
    ]
    cities = [f"Pune{tag}", f"Oslo{tag}", f"Lima{tag}"]
    tiers = [f"gold{tag}", f"silver{tag}", f"bronze{tag}"]
    rows: dict[int, Row] = {}
    people = [f"p{i}.{tag}@aud{i % 4}.example" for i in range(240)]
    for email in people:
        for list_id in rng.sample(lists, rng.choice([1, 1, 2, 3, 4])):
            fields: dict[str, Any] = {"n": str(rng.randrange(1000))}
            if rng.random() < 0.8:
                fields["city"] = rng.choice(cities)
            if rng.random() < 0.6:
                fields["tier"] = rng.choice(tiers)
            row = Row(list_id, email, fields, rng.choice(STATUSES))
            rid = await pool.fetchval(
                "INSERT INTO recipients (list_id, email, fields, status) VALUES ($1, $2, $3, $4)"
                " RETURNING id",
                row.list_id,
                row.email,
                row.fields,
                row.status,
            )
            rows[rid] = row
    suppressed = set(rng.sample(people, 25))
    await pool.executemany(
        "INSERT INTO suppressions (email, reason) VALUES ($1, 'unsubscribe')",
        [(e,) for e in suppressed],
    )
    filters: list[dict[str, Any]] = [
        {"field": "city", "op": "eq", "value": cities[0]},
        {"field": "tier", "op": "in", "value": tiers[:2]},
        {"and": [{"list": str(lists[1])}, {"field": "city", "op": "eq", "value": cities[1]}]},
        {"list": str(lists[3])},
        {
            "and": [
                {"list": str(lists[0])},
                {"not": {"field": "tier", "op": "eq", "value": tiers[0]}},
            ]
        },
        {"or": [{"field": "city", "op": "eq", "value": cities[2]}, {"list": str(lists[2])}]},
    ]
    return World(tag, lists, rows, suppressed, {uuid.uuid4(): f for f in filters})


def parsed_filters(world: World) -> dict[uuid.UUID, segments.Node]:
    return {k: segments.parse(v) for k, v in world.filters.items()}


async def run(
    pool: asyncpg.Pool, world: World, audience: Audience, keep_suppressed: bool
) -> dict[str, tuple[int, bool]]:
    built = build(audience, parsed_filters(world), now=NOW, keep_suppressed=keep_suppressed)
    flag = "r.suppressed" if keep_suppressed else "false"
    rows = await pool.fetch(
        f"SELECT r.id, r.email, {flag} AS suppressed FROM ({built.sql}) AS r",  # noqa: S608
        *built.params,
    )
    found = {r["email"]: (r["id"], r["suppressed"]) for r in rows}
    assert len(found) == len(rows), "an address came out twice"
    return found


def _random_audience(rng: random.Random, world: World) -> Audience:
    segment_ids = list(world.filters)
    while True:
        lists = rng.sample(world.lists, rng.choice([0, 1, 1, 2, 3]))
        segs = rng.sample(segment_ids, rng.choice([0, 0, 1, 2]))
        if lists or segs:
            break
    others = [x for x in world.lists if x not in lists]
    other_segs = [s for s in segment_ids if s not in segs]
    return Audience(
        lists=tuple(lists),
        segments=tuple(segs),
        exclude_lists=tuple(rng.sample(others, min(len(others), rng.choice([0, 0, 1])))),
        exclude_segments=tuple(rng.sample(other_segs, rng.choice([0, 0, 1]))),
    )


async def test_random_audiences_select_what_the_reference_selects(
    pool: asyncpg.Pool, world: World
) -> None:
    rng = random.Random(7)
    checked = 0
    for _ in range(120):
        audience = _random_audience(rng, world)
        expected = reference(world, audience)
        keep = rng.random() < 0.5
        if not keep:
            expected = {e: v for e, v in expected.items() if not v[1]}
        assert await run(pool, world, audience, keep) == expected, audience
        counted = build_count(audience, parsed_filters(world), now=NOW, first_param=1)
        addresses = len(reference(world, audience))
        assert await pool.fetchval(counted.sql, *counted.params) == addresses, audience
        checked += bool(expected)
    assert checked > 100  # most definitions select someone: the comparisons mean something


async def test_overlapping_lists_mail_each_address_once_with_the_first_lists_row(
    pool: asyncpg.Pool, world: World
) -> None:
    first, second = world.lists[0], world.lists[1]
    both = world.on_list(first) & world.on_list(second)
    assert both  # the world has overlaps
    found = await run(pool, world, Audience(lists=(first, second)), keep_suppressed=True)
    active = {
        r.email
        for r in world.rows.values()
        if r.status == "active" and r.list_id in (first, second)
    }
    assert both & active
    for email in both & active:
        row = world.rows[found[email][0]]
        active_on_first = any(
            r.email == email and r.list_id == first and r.status == "active"
            for r in world.rows.values()
        )
        assert row.list_id == (first if active_on_first else second)


async def test_only_active_rows_are_mailed(pool: asyncpg.Pool, world: World) -> None:
    only = world.lists[2]
    found = await run(pool, world, Audience(lists=(only,)), keep_suppressed=True)
    statuses = {r.status for r in world.rows.values() if r.list_id == only}
    assert statuses >= {"active", "unconfirmed", "unsubscribed"}
    assert found
    assert {world.rows[rid].status for rid, _ in found.values()} == {"active"}
    assert len(found) == sum(
        1 for r in world.rows.values() if r.list_id == only and r.status == "active"
    )


async def test_exclusions_remove_addresses_whatever_their_status_there(
    pool: asyncpg.Pool, world: World
) -> None:
    keep, drop = world.lists[0], world.lists[1]
    found = await run(
        pool, world, Audience(lists=(keep,), exclude_lists=(drop,)), keep_suppressed=False
    )
    assert found
    assert not set(found) & world.on_list(drop)
    assert not set(found) & world.suppressed


def test_single_list_needs_no_deduplication() -> None:
    one = build(Audience(lists=(uuid.uuid4(),)), {}, now=NOW)
    assert "DISTINCT" not in one.sql and "list_id = $1::uuid" in one.sql
    two = build(Audience(lists=(uuid.uuid4(), uuid.uuid4())), {}, now=NOW, first_param=5)
    assert "DISTINCT ON (c.email)" in two.sql and "$5" in two.sql and "$1" not in two.sql


def test_values_never_become_sql() -> None:
    segment = uuid.uuid4()
    evil = "x'); DROP TABLE recipients; --"
    built = build(
        Audience(lists=(uuid.uuid4(),), exclude_segments=(segment,)),
        {segment: segments.parse({"field": evil, "op": "eq", "value": evil})},
        now=NOW,
    )
    assert evil not in built.sql and built.params.count(evil) == 2


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ([], "$"),
        ({}, "$.lists"),
        ({"lists": [], "segments": []}, "$.lists"),
        ({"lists": ["nope"]}, "$.lists[0]"),
        ({"lists": [str(uuid.UUID(int=1)), str(uuid.UUID(int=1))]}, "$.lists[1]"),
        ({"lists": [str(uuid.UUID(int=i)) for i in range(21)]}, "$.lists"),
        ({"segments": "x"}, "$.segments"),
        ({"lists": [str(uuid.UUID(int=1))], "exclude_lists": [str(uuid.UUID(int=1))]},
         "$.exclude_lists[0]"),
        ({"lists": [str(uuid.UUID(int=1))], "extra": []}, "$.extra"),
    ],
)  # fmt: skip
def test_bad_definitions_name_the_bad_member(value: Any, path: str) -> None:
    with pytest.raises(AudienceError) as caught:
        parse(value)
    assert caught.value.path == path


def test_definition_round_trips_and_shorthand() -> None:
    a, b, s = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    audience = parse({"lists": [str(a), str(b)], "exclude_segments": [str(s)]})
    assert parse(audience.to_json()) == audience
    assert audience.primary_list == a and audience.segment_ids == (s,)
    assert Audience.of_campaign(None, a) == Audience(lists=(a,))
    with pytest.raises(AudienceError):
        audiences.parse_filters(audience, {})  # the copy of a segment's filter is missing


async def test_a_whole_list_is_counted_without_a_scan_and_follows_its_changes(
    pool: asyncpg.Pool,
) -> None:
    """A draft's audience of one list: its kept size less its recipients who are not active,
    through their partial index; unsubscribes, re-subscribes, deletes and imports move it."""
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ('count') RETURNING id")
    await pool.execute(
        "INSERT INTO recipients (list_id, email) SELECT $1, 'c' || g || '@example.com'"
        " FROM generate_series(1, 50) g",
        list_id,
    )
    counted = build_count(Audience(lists=(list_id,)), {}, now=NOW)

    async def count() -> int:
        return int(await pool.fetchval(counted.sql, *counted.params))

    async def actual() -> int:
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM recipients WHERE list_id = $1 AND status = 'active'",
                list_id,
            )
        )

    assert await count() == await actual() == 50
    await pool.execute(
        "UPDATE recipients SET status = 'unsubscribed' WHERE list_id = $1"
        " AND email IN ('c1@example.com', 'c2@example.com', 'c3@example.com')",
        list_id,
    )
    await pool.execute(
        "UPDATE recipients SET status = 'active' WHERE list_id = $1 AND email = 'c3@example.com'",
        list_id,
    )
    await pool.execute(
        "DELETE FROM recipients WHERE list_id = $1 AND email IN ('c1@example.com',"
        " 'c4@example.com')",
        list_id,
    )
    await pool.execute(
        "INSERT INTO recipients (list_id, email, status) VALUES ($1, 'new@example.com',"
        " 'unconfirmed')",
        list_id,
    )
    assert await count() == await actual() == 47
    async with pool.acquire() as conn, conn.transaction():
        # However small the test's table: the partial index can answer the query.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.fetch(f"EXPLAIN {counted.sql}", *counted.params)  # noqa: S608
    assert "recipients_not_active" in "\n".join(r[0] for r in plan)
