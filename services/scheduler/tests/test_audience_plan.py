"""The scheduler plans a campaign's audience (issue 15 item 2): lists and segments minus
exclusions, each address once, only active rows; the zoned plan's fallback zone; a row
unsubscribed after planning is held back at emission; an unusable definition fails the
campaign instead of being retried forever."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.scheduler.repository import ScheduleRepository


async def _list(
    pool: asyncpg.Pool, rows: dict[str, dict[str, Any]], zone: str | None = None
) -> uuid.UUID:
    list_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO lists (name, default_timezone) VALUES ('aud', $1) RETURNING id", zone
    )
    await pool.executemany(
        "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, $3)",
        [(list_id, e, f) for e, f in rows.items()],
    )
    return list_id


async def _campaign(
    pool: asyncpg.Pool,
    list_id: uuid.UUID | None,
    audience: dict[str, Any],
    filters: dict[str, Any],
    **columns: Any,
) -> uuid.UUID:
    campaign_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status,"
        " send_at, audience, audience_filters) VALUES ('c', 's', '<p>x</p>', 'f@example.com',"
        " $1, 'sink', 'scheduled', $2, $3, $4) RETURNING id",
        list_id,
        datetime.now(UTC) - timedelta(seconds=1),
        audience,
        filters,
    )
    for name, value in columns.items():
        await pool.execute(
            f"UPDATE campaigns SET {name} = $2 WHERE id = $1",  # noqa: S608 - test's own names
            campaign_id,
            value,
        )
    return campaign_id


async def _planned(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT r.email, r.list_id, r.fields, b.zone FROM batch_plans b"
        " CROSS JOIN LATERAL unnest(b.recipient_ids) AS m(rid)"
        " JOIN recipients r ON r.id = m.rid WHERE b.campaign_id = $1",
        campaign_id,
    )
    emails = [r["email"] for r in rows]
    assert len(emails) == len(set(emails)), "an address was planned twice"
    return {r["email"]: dict(r) for r in rows}


async def test_two_lists_minus_a_segment_each_address_once(pool: asyncpg.Pool) -> None:
    tag = uuid.uuid4().hex[:8]
    e = [f"u{i}.{tag}@example.com" for i in range(8)]
    first = await _list(pool, {x: {"from": "first", "city": "Oslo"} for x in e[:5]})
    second = await _list(
        pool, {x: {"from": "second", "city": "Pune" if x == e[6] else "Lima"} for x in e[3:]}
    )
    await pool.execute("UPDATE recipients SET status = 'unconfirmed' WHERE email = $1", e[7])
    await pool.execute(
        "UPDATE recipients SET status = 'unsubscribed' WHERE email = $1 AND list_id = $2",
        e[4],
        first,
    )
    await pool.execute("INSERT INTO suppressions (email, reason) VALUES ($1, 'manual')", e[0])
    segment = str(uuid.uuid4())
    audience = {"lists": [str(first), str(second)], "exclude_segments": [segment]}
    filters = {segment: {"field": "city", "op": "eq", "value": "Pune"}}
    campaign_id = await _campaign(pool, first, audience, filters)
    plan = await ScheduleRepository(pool).claim_and_plan(campaign_id, 2)
    assert plan is not None
    # e0 suppressed; e1-e3 on first; e4 unsubscribed from first, active on second; e5 on
    # second; e6 Pune (excluded); e7 unconfirmed.
    assert (plan.audience_total, plan.suppressed_total) == (6, 1)
    planned = await _planned(pool, campaign_id)
    assert set(planned) == set(e[1:6])
    assert planned[e[3]]["fields"]["from"] == "first"  # the first list's row wins
    assert planned[e[4]]["fields"]["from"] == "second"
    stored = await pool.fetchval(
        "SELECT audience FROM campaign_plans WHERE campaign_id = $1", campaign_id
    )
    assert stored["filters"] == filters and stored["lists"] == audience["lists"]


async def test_segment_only_zoned_plan_falls_back_to_the_campaign_zone(
    pool: asyncpg.Pool,
) -> None:
    tag = uuid.uuid4().hex[:8]
    berlin = await _list(
        pool,
        {f"z{i}.{tag}@example.com": {"tag": tag} for i in range(3)},
        zone="Europe/Berlin",
    )
    segment = str(uuid.uuid4())
    filters = {segment: {"field": "tag", "op": "eq", "value": tag}}
    window = {"start": "00:00", "end": "23:59"}
    only_segment = await _campaign(
        pool, None, {"segments": [segment]}, filters, timezone="Asia/Tokyo", send_window=window
    )
    await ScheduleRepository(pool).claim_and_plan(only_segment, 10)
    assert {p["zone"] for p in (await _planned(pool, only_segment)).values()} == {"Asia/Tokyo"}
    # With lists, the first list's default zone.
    other = await _list(pool, {f"o.{tag}@example.com": {}}, zone="America/Lima")
    listed = await _campaign(
        pool,
        berlin,
        {"lists": [str(berlin), str(other)]},
        {},
        timezone="Asia/Tokyo",
        send_window=window,
    )
    await ScheduleRepository(pool).claim_and_plan(listed, 10)
    zones = {p["zone"] for p in (await _planned(pool, listed)).values()}
    assert zones == {"Europe/Berlin"}


async def test_a_row_unsubscribed_after_planning_is_held_back(pool: asyncpg.Pool) -> None:
    tag = uuid.uuid4().hex[:8]
    emails = [f"h{i}.{tag}@example.com" for i in range(3)]
    list_id = await _list(pool, {x: {} for x in emails})
    campaign_id = await _campaign(pool, list_id, {"lists": [str(list_id)]}, {})
    repo = ScheduleRepository(pool)
    await repo.claim_and_plan(campaign_id, 10)
    await pool.execute("UPDATE recipients SET status = 'unsubscribed' WHERE email = $1", emails[1])
    async with repo.batches_to_emit(datetime.now(UTC), 1000) as window:
        mine = [b for b in window.batches if b.campaign_id == campaign_id]
        assert len(mine) == 1
        held = {email for rid, email, _ in mine[0].recipients if rid in mine[0].suppressed_ids}
    assert held == {emails[1]}


async def test_an_audience_without_its_filters_fails_the_campaign(pool: asyncpg.Pool) -> None:
    tag = uuid.uuid4().hex[:8]
    list_id = await _list(pool, {f"f.{tag}@example.com": {}})
    segment = str(uuid.uuid4())
    campaign_id = await _campaign(
        pool, list_id, {"lists": [str(list_id)], "exclude_segments": [segment]}, {}
    )
    plan = await ScheduleRepository(pool).claim_and_plan(campaign_id, 10)
    assert plan is not None and plan.batches_total == 0
    status, reason = await pool.fetchrow(
        "SELECT status, pause_reason FROM campaigns WHERE id = $1", campaign_id
    )
    assert status == "failed" and segment in reason
    assert (
        await pool.fetchval("SELECT count(*) FROM batch_plans WHERE campaign_id = $1", campaign_id)
        == 0
    )
