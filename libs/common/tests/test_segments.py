"""The segment compiler against a reference evaluation in Python.

Generated recipients on three lists (addresses shared between lists, merge fields of every
shape: text, numbers as text and as JSON numbers, dates with and without a time, impossible
dates, empty strings, nulls, missing keys, non-ASCII), suppressions, and a delivery log with
sends, opens, clicks and soft bounces over four campaigns. Every operator, and a few hundred
random trees of them, must select exactly the rows the reference selects. The reference
reads the raw JSON filter: it shares no code with the compiler but its two regular
expressions (what counts as a number, and as a date).
"""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from libs.common import segments
from libs.common.segments import SegmentError, compile_filter, parse
from libs.stats import engagement

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CITIES = ["Pune", "pune", "PUNE", "Mumbai", "München", "münchen", "Paris", "", "São Paulo"]
AGES: list[Any] = ["30", "7", "-2", "4.5", "1e2", ".5", "+8", "thirty", "", " 30", "12\n", 41, 3.25]
DATES = [
    "2026-01-15",
    "2026-11-30T08:00:00Z",
    "2025-02-30",
    "2026-1-5",
    "20260101",
    "",
    "2026-06-01 10:00",
]
WEIRD_KEY = "ci'ty\"; DROP TABLE recipients; --"


@dataclass
class World:
    lists: list[uuid.UUID]
    campaigns: list[uuid.UUID]
    # recipient id -> (list id, email, fields)
    rows: dict[int, tuple[uuid.UUID, str, dict[str, Any]]]
    suppressed: dict[str, str] = field(default_factory=dict)  # email -> reason
    # email -> [(campaign, status, sent_at, opened_at, clicked_at, bounced_at, bounce_type)]
    deliveries: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def members(self, list_id: uuid.UUID) -> set[str]:
        return {email for lid, email, _ in self.rows.values() if lid == list_id}


def _fields(rng: random.Random) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if rng.random() < 0.85:
        fields["city"] = rng.choice([*CITIES, None])
    if rng.random() < 0.8:
        fields["age"] = rng.choice(AGES)
    if rng.random() < 0.7:
        fields["signup"] = rng.choice(DATES)
    if rng.random() < 0.2:
        fields[WEIRD_KEY] = rng.choice(["x' OR '1'='1", "%_\\", "plain"])
    return fields


@pytest.fixture(scope="module")
async def world(pool: asyncpg.Pool) -> World:
    rng = random.Random(15)
    tag = uuid.uuid4().hex[:8]
    lists = [
        await pool.fetchval("INSERT INTO lists (name) VALUES ($1) RETURNING id", f"seg {tag} {i}")
        for i in range(3)
    ]
    people = [f"p{i}.{tag}@seg{i % 3}.example" for i in range(160)]
    rows: dict[int, tuple[uuid.UUID, str, dict[str, Any]]] = {}
    for email in people:
        for list_id in rng.sample(lists, rng.choice([1, 1, 2, 3])):
            fields = _fields(rng)
            rid = await pool.fetchval(
                "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, $3) RETURNING id",
                list_id,
                email,
                fields,
            )
            rows[rid] = (list_id, email, fields)
    world = World(lists, [], rows)
    for email in rng.sample(people, 30):
        reason = rng.choice(segments.SUPPRESSION_REASONS)
        await pool.execute(
            "INSERT INTO suppressions (email, reason) VALUES ($1, $2)", email, reason
        )
        world.suppressed[email] = reason
    # Campaigns: one still running (finished_at NULL), others finished 2, 20 and 200 days ago.
    for i, finished_days in enumerate([None, 2, 20, 200]):
        finished = NOW - timedelta(days=finished_days) if finished_days is not None else None
        cid = await pool.fetchval(
            "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider,"
            " status, finished_at) VALUES ($1, 's', 'h', 'f@example.com', $2, 'sink', $3, $4)"
            " RETURNING id",
            f"seg {tag} {i}",
            lists[0],
            "in_progress" if finished is None else "completed",
            finished,
        )
        world.campaigns.append(cid)
        ends = finished or NOW
        by_email = {email: rid for rid, (_, email, _) in rows.items()}
        for email in rng.sample(people, 90):
            status = rng.choice(["sent", "sent", "sent", "failed", "suppressed"])
            sent_at = ends - timedelta(hours=rng.randint(1, 48))
            opened = clicked = bounced = None
            bounce_type = None
            if status == "sent":
                if rng.random() < 0.4:
                    opened = sent_at + timedelta(days=rng.randint(0, 30))
                    if rng.random() < 0.5:
                        clicked = opened + timedelta(hours=1)
                elif rng.random() < 0.3:
                    bounced = sent_at + timedelta(hours=2)
                    bounce_type = rng.choice(["soft", "bounce", "blocked"])
            await pool.execute(
                "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id,"
                " sent_at, opened_at, clicked_at, bounced_at, bounce_type)"
                " VALUES ($1, $2, $3, $4, 'b', $5, $6, $7, $8, $9)",
                cid,
                by_email[email],
                email,
                status,
                sent_at,
                opened,
                clicked,
                bounced,
                bounce_type,
            )
            world.deliveries.setdefault(email, []).append(
                (cid, status, sent_at, opened, clicked, bounced, bounce_type)
            )
        if finished is not None:  # over, every batch accounted for: the tracker's job may
            await pool.execute("INSERT INTO campaign_stats (campaign_id) VALUES ($1)", cid)
    # The finished campaigns' sends go into the engagement summary (as the tracker's job
    # does); the running one's are read from the delivery log: filters see both kinds.
    await engagement.summarise_finished_campaigns(pool)
    summarised = await pool.fetch(
        "SELECT campaign_id FROM engagement_summarised WHERE campaign_id = ANY($1::uuid[])",
        world.campaigns,
    )
    assert {r["campaign_id"] for r in summarised} == set(world.campaigns[1:])
    return world


# ---- the reference ---------------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NUMBER = re.compile(segments.NUMBER_PATTERN.removeprefix("^").removesuffix("$"))


def _text(value: Any) -> str | None:
    """What PostgreSQL's `->>` gives for a JSON value."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return str(value)


def _number(text: str) -> Decimal | None:
    if len(text) <= segments.MAX_NUMBER_CHARS and _NUMBER.fullmatch(text):
        return Decimal(text)
    return None


def _date_text(text: str) -> str | None:
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text[:10]) and (
        len(text) == 10 or text[10] in "T "
    ):
        return text[:10]
    return None


def _compare(left: Any, op: str, right: Any) -> bool:
    return {
        "gt": left > right,
        "gte": left >= right,
        "lt": left < right,
        "lte": left <= right,
    }[op]


def reference(node: dict[str, Any], world: World, rid: int) -> bool:
    list_id, email, fields = world.rows[rid]
    if "and" in node:
        return all(reference(n, world, rid) for n in node["and"])
    if "or" in node:
        return any(reference(n, world, rid) for n in node["or"])
    if "not" in node:
        return not reference(node["not"], world, rid)
    if "field" in node:
        text = _text(fields.get(node["field"]))
        op, value = node["op"], node.get("value")
        if op == "is_empty":
            return text is None or text == ""
        if text is None:
            return False
        if op == "eq":
            return text == value
        if op == "in":
            return text in value
        if op == "contains":
            return value.translate(_ASCII_LOWER) in text.translate(_ASCII_LOWER)
        if op == "starts_with":
            return text.translate(_ASCII_LOWER).startswith(value.translate(_ASCII_LOWER))
        if isinstance(value, str):
            found = _date_text(text)
            return found is not None and _compare(found, op, date.fromisoformat(value).isoformat())
        number = _number(text)
        return number is not None and _compare(number, op, Decimal(str(value)))
    if "list" in node:
        return email in world.members(uuid.UUID(node["list"]))
    if "suppressed" in node:
        wanted = node["suppressed"]
        reason = world.suppressed.get(email)
        if wanted is True:
            return reason is not None
        if wanted is False:
            return reason is None
        return reason == wanted
    kind = node.get("engaged") or node.get("never")
    campaign = uuid.UUID(node["campaign"]) if "campaign" in node else None
    cutoff = NOW - timedelta(days=node["within_days"]) if "within_days" in node else None

    def happened(what: str) -> bool:
        for cid, status, sent_at, opened, clicked, bounced, bounce_type in world.deliveries.get(
            email, []
        ):
            if campaign is not None and cid != campaign:
                continue
            if what == "received":
                when = sent_at if status == "sent" else None
            elif what == "opened":
                when = opened
            elif what == "clicked":
                when = clicked
            else:
                when = bounced if bounce_type == "soft" else None
            if when is not None and (cutoff is None or when >= cutoff):
                return True
        return False

    if "never" in node:
        return happened("received") and not happened(kind)
    return happened(kind)


# ---- the filters -----------------------------------------------------------------------


def atoms(world: World) -> list[dict[str, Any]]:
    l0, l1, l2 = (str(x) for x in world.lists)
    c_running, c_recent, c_month, c_old = (str(x) for x in world.campaigns)
    found: list[dict[str, Any]] = [
        {"field": "city", "op": "eq", "value": "Pune"},
        {"field": "city", "op": "eq", "value": "München"},
        {"field": "city", "op": "eq", "value": ""},
        {"field": "city", "op": "in", "value": ["Pune", "Paris", "nowhere"]},
        {"field": "city", "op": "contains", "value": "un"},
        {"field": "city", "op": "contains", "value": "UN"},
        {"field": "city", "op": "contains", "value": "ü"},
        {"field": "city", "op": "contains", "value": "Ü"},
        {"field": "city", "op": "starts_with", "value": "p"},
        {"field": "city", "op": "starts_with", "value": "São"},
        {"field": "city", "op": "contains", "value": ""},
        {"field": "city", "op": "is_empty"},
        {"field": "age", "op": "is_empty"},
        {"field": "nope", "op": "is_empty"},
        {"field": "age", "op": "eq", "value": "30"},
        {"field": "age", "op": "eq", "value": "41"},
        {"field": "signup", "op": "is_empty"},
        {"field": WEIRD_KEY, "op": "eq", "value": "x' OR '1'='1"},
        {"field": WEIRD_KEY, "op": "contains", "value": "%_\\"},
        {"field": WEIRD_KEY, "op": "is_empty"},
        {"list": l0},
        {"list": l1},
        {"list": l2},
        {"list": str(uuid.uuid4())},
        {"suppressed": True},
        {"suppressed": False},
        *({"suppressed": reason} for reason in segments.SUPPRESSION_REASONS),
    ]
    for op in segments.ORDER_OPS:
        for number in (30, 4.5, -2, 0, 100, 3.25, 0.5):
            found.append({"field": "age", "op": op, "value": number})
        for day in ("2026-01-15", "2026-11-30", "2025-03-01"):
            found.append({"field": "signup", "op": op, "value": day})
    for kind in segments.ENGAGEMENTS:
        found.append({"engaged": kind})
        for cid in (c_running, c_recent, c_month, c_old):
            found.append({"engaged": kind, "campaign": cid})
        for days in (1, 3, 15, 30, 365):
            found.append({"engaged": kind, "within_days": days})
    for kind in segments.NEVER:
        found.append({"never": kind})
        found.append({"never": kind, "campaign": c_recent})
        found.append({"never": kind, "within_days": 30})
    return found


def random_tree(rng: random.Random, pool: list[dict[str, Any]], depth: int) -> dict[str, Any]:
    if depth == 0 or rng.random() < 0.35:
        return rng.choice(pool)
    kind = rng.choice(["and", "or", "not"])
    if kind == "not":
        return {"not": random_tree(rng, pool, depth - 1)}
    return {kind: [random_tree(rng, pool, depth - 1) for _ in range(rng.randint(1, 4))]}


async def sql_rows(pool: asyncpg.Pool, world: World, node: dict[str, Any]) -> set[int]:
    compiled = compile_filter(parse(node), now=NOW, first_param=2)
    rows = await pool.fetch(
        f"SELECT r.id FROM recipients r{compiled.joins}"  # noqa: S608
        f" WHERE r.list_id = ANY($1::uuid[]) AND {compiled.where}",
        world.lists,
        *compiled.params,
    )
    return {r["id"] for r in rows}


def reference_rows(world: World, node: dict[str, Any]) -> set[int]:
    return {rid for rid in world.rows if reference(node, world, rid)}


async def test_every_operator_agrees_with_the_reference(pool: asyncpg.Pool, world: World) -> None:
    checked_nonempty = 0
    for node in atoms(world):
        for each in (node, {"not": node}):
            expected = reference_rows(world, each)
            assert await sql_rows(pool, world, each) == expected, each
            checked_nonempty += bool(expected) and len(expected) < len(world.rows)
    # The data is rich enough that most operators split the rows (not all or nothing).
    assert checked_nonempty > 120


async def test_random_trees_agree_with_the_reference(pool: asyncpg.Pool, world: World) -> None:
    rng = random.Random(1501)
    pool_of_atoms = atoms(world)
    for _ in range(150):
        tree = random_tree(rng, pool_of_atoms, 3)
        assert await sql_rows(pool, world, tree) == reference_rows(world, tree), tree


async def test_count_is_of_distinct_addresses(pool: asyncpg.Pool, world: World) -> None:
    """Both plans of the count: DISTINCT over matching rows, and (a top-level list and no
    merge field) the rows of that list alone. Addresses sit on several lists with
    different fields, so a plan that counted rows, or read one list's fields, would differ."""
    l0, l1 = str(world.lists[0]), str(world.lists[1])
    cases = [
        ({"and": [{"list": l0}, {"field": "age", "op": "gte", "value": 5}]}, False),
        ({"or": [{"list": l0}, {"field": "city", "op": "starts_with", "value": "p"}]}, False),
        ({"list": l1}, True),
        ({"and": [{"list": l0}, {"not": {"list": l1}}, {"suppressed": False}]}, True),
        ({"and": [{"engaged": "opened", "within_days": 30}, {"list": l1}]}, True),
        (
            {
                "and": [
                    {"list": l0},
                    {"or": [{"never": "opened"}, {"engaged": "soft_bounced"}]},
                    {"not": {"engaged": "clicked", "campaign": str(world.campaigns[1])}},
                ]
            },
            True,
        ),
    ]
    for node, scoped in cases:
        compiled = compile_filter(parse(node), now=NOW)
        assert (compiled.scope_list is not None) == scoped, node
        # Only this world's rows (other tests share the database).
        lists = f"r.list_id = ANY(${len(compiled.params) + 1}::uuid[])"
        count = await pool.fetchval(compiled.count_sql(lists), *compiled.params, world.lists)
        expected = {world.rows[rid][1] for rid in reference_rows(world, node)}
        assert count == len(expected) > 0, node


async def test_injection_in_names_and_values_stays_data(pool: asyncpg.Pool, world: World) -> None:
    hostile = [
        "x'); DELETE FROM recipients; --",
        "$1 OR true",
        "' OR 1=1 --",
        "\\' OR TRUE --",
        'city"; DROP TABLE suppressions; --',
        "fields->>'city'",
        "%",
        "a\u2028b",
    ]
    before = await pool.fetchval("SELECT count(*) FROM recipients")
    for text in hostile:
        for node in (
            {"field": text, "op": "eq", "value": text},
            {"field": "city", "op": "contains", "value": text},
            {"field": text, "op": "in", "value": [text, "Pune"]},
            {"field": "city", "op": "starts_with", "value": text},
            {"field": text, "op": "is_empty"},
        ):
            compiled = compile_filter(parse(node), now=NOW)
            assert text not in compiled.joins + compiled.where
            assert text in compiled.params or [text, "Pune"] in compiled.params
            assert await sql_rows(pool, world, node) == reference_rows(world, node)
    # The hostile field that does exist on some rows is matched as a plain key.
    weird = {"field": WEIRD_KEY, "op": "eq", "value": "x' OR '1'='1"}
    assert reference_rows(world, weird), "the data holds the hostile key"
    assert await pool.fetchval("SELECT count(*) FROM recipients") == before
    assert await pool.fetchval("SELECT to_regclass('suppressions') IS NOT NULL")


# ---- validation: the path names the bad node -----------------------------------------


@pytest.mark.parametrize(
    ("tree", "path"),
    [
        ([], "$"),
        ({}, "$"),
        ({"and": []}, "$.and"),
        ({"and": {"field": "a"}}, "$.and"),
        (
            {"and": [{"field": "a", "op": "eq", "value": "x"}, {"field": "b", "op": "like"}]},
            "$.and[1].op",
        ),
        ({"or": [{"not": {"field": "a", "op": "in", "value": []}}]}, "$.or[0].not.value"),
        ({"or": [{"field": "a", "op": "in", "value": ["x", 3]}]}, "$.or[0].value[1]"),
        ({"field": "", "op": "eq", "value": "x"}, "$.field"),
        ({"field": 3, "op": "eq", "value": "x"}, "$.field"),
        ({"field": "a", "op": "eq"}, "$.value"),
        ({"field": "a", "op": "eq", "value": 3}, "$.value"),
        ({"field": "a", "op": "is_empty", "value": "x"}, "$.value"),
        ({"field": "a", "op": "gt", "value": "tomorrow"}, "$.value"),
        ({"field": "a", "op": "gt", "value": "2026-02-30"}, "$.value"),
        ({"field": "a", "op": "gt", "value": True}, "$.value"),
        ({"field": "a", "op": "gt", "value": 1e300}, "$.value"),
        ({"field": "a", "op": "eq", "value": "x", "extra": 1}, "$.extra"),
        ({"list": "not-a-uuid"}, "$.list"),
        ({"suppressed": "maybe"}, "$.suppressed"),
        ({"engaged": "read"}, "$.engaged"),
        ({"engaged": "opened", "within_days": 0}, "$.within_days"),
        ({"engaged": "opened", "within_days": 5000}, "$.within_days"),
        ({"engaged": "opened", "within_days": "7"}, "$.within_days"),
        ({"engaged": "opened", "within_days": 7, "campaign": str(uuid.uuid4())}, "$.within_days"),
        ({"never": "received"}, "$.never"),
        ({"and": [{"list": str(uuid.uuid4()), "not": {}}]}, "$.and[0].list"),
        ({"colour": "red"}, "$"),
    ],
)
def test_a_bad_filter_names_its_node(tree: Any, path: str) -> None:
    with pytest.raises(SegmentError) as caught:
        parse(tree)
    assert caught.value.path == path, caught.value


def test_limits() -> None:
    leaf: dict[str, Any] = {"field": "a", "op": "is_empty"}
    deep: dict[str, Any] = leaf
    for _ in range(segments.MAX_DEPTH):
        deep = {"not": deep}
    with pytest.raises(SegmentError, match="deeper"):
        parse(deep)
    parse({"not": {"not": leaf}})
    wide = {"or": [{"and": [leaf] * 40} for _ in range(6)]}
    with pytest.raises(SegmentError, match="nodes"):
        parse(wide)
    with pytest.raises(SegmentError, match="at most"):
        parse({"or": [leaf] * (segments.MAX_CHILDREN + 1)})
    with pytest.raises(SegmentError) as caught:
        parse({"field": "a", "op": "eq", "value": "x" * (segments.MAX_VALUE_CHARS + 1)})
    assert caught.value.path == "$.value"
    with pytest.raises(SegmentError) as caught:
        parse({"field": "a" * (segments.MAX_FIELD_CHARS + 1), "op": "is_empty"})
    assert caught.value.path == "$.field"
    with pytest.raises(SegmentError) as caught:
        parse({"field": "a", "op": "in", "value": ["x"] * (segments.MAX_IN_VALUES + 1)})
    assert caught.value.path == "$.value"


def test_equal_sets_share_one_join() -> None:
    node = parse(
        {
            "or": [
                {"engaged": "opened", "within_days": 30},
                {"not": {"engaged": "opened", "within_days": 30}},
                {"suppressed": "bounce"},
                {"suppressed": "bounce"},
            ]
        }
    )
    compiled = compile_filter(node, now=NOW)
    assert compiled.joins.count("LEFT JOIN") == 2
    # Every placeholder is used, and every parameter has one.
    used = {int(n) for n in re.findall(r"\$(\d+)", compiled.joins + compiled.where)}
    assert used == set(range(1, len(compiled.params) + 1))


async def test_the_engagement_summary_follows_late_writes(pool: asyncpg.Pool) -> None:
    """After its campaign is summarised, a delivery that turns `sent` late (a provider's
    evidence) or is opened still counts: the trigger carries it to the summary."""
    tag = uuid.uuid4().hex[:8]
    list_id = await pool.fetchval("INSERT INTO lists (name) VALUES ($1) RETURNING id", tag)
    email = f"late.{tag}@example.com"
    rid = await pool.fetchval(
        "INSERT INTO recipients (list_id, email) VALUES ($1, $2) RETURNING id", list_id, email
    )
    cid = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " finished_at) VALUES ($1, 's', 'h', 'f@example.com', $2, 'sink', 'completed', $3)"
        " RETURNING id",
        tag,
        list_id,
        NOW - timedelta(days=1),
    )
    await pool.execute("INSERT INTO campaign_stats (campaign_id) VALUES ($1)", cid)
    await pool.execute(
        "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id, sent_at)"
        " VALUES ($1, $2, $3, 'unknown', 'b', $4)",
        cid,
        rid,
        email,
        NOW - timedelta(days=2),
    )
    await engagement.summarise_finished_campaigns(pool)
    assert await pool.fetchval("SELECT 1 FROM engagement_summarised WHERE campaign_id = $1", cid)

    async def matches(node: dict[str, Any]) -> bool:
        compiled = compile_filter(parse(node), now=NOW, first_param=2)
        found = await pool.fetchval(
            f"SELECT count(*) FROM recipients r{compiled.joins}"  # noqa: S608
            f" WHERE r.list_id = $1 AND {compiled.where}",
            list_id,
            *compiled.params,
        )
        return bool(found)

    received = {"engaged": "received", "within_days": 7}
    opened = {"engaged": "opened", "within_days": 7}
    assert not await matches(received)
    await pool.execute(
        "UPDATE deliveries SET status = 'sent' WHERE campaign_id = $1 AND recipient_id = $2",
        cid,
        rid,
    )
    assert await matches(received)
    assert not await matches(opened)
    assert await matches({"never": "opened", "within_days": 7})
    await pool.execute(
        "UPDATE deliveries SET opened_at = $3 WHERE campaign_id = $1 AND recipient_id = $2",
        cid,
        rid,
        NOW - timedelta(hours=3),
    )
    assert await matches(opened)
    assert not await matches({"never": "opened", "within_days": 7})
