"""A/B tests in the scheduler (issue 17 item 1) against the real PostgreSQL, driven by an
injected clock: the seeded split, the remainder held until a winner, the winner decided
once from the tracker's per-variant counters (the real tracker store folds the results and
opens), pause/resume, cancel, and a zoned plan partitioned by variant."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from libs.common.events import DeliveryEvent, DeliveryResult, RecipientOutcome
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from libs.stats.ab import size_tested
from services.scheduler.app import NO_CUTOFF, BatchEmitter
from services.scheduler.repository import PendingBatch, ScheduleRepository
from services.scheduler.tests.test_batch_bytes import collect_results
from services.scheduler.tests.test_scheduler import collect_batches
from services.tracker.store import TrackerStore

T0 = datetime(2031, 5, 4, 8, 0, tzinfo=UTC)
WAIT = timedelta(hours=2)
SUBJECTS = {"A": "Subject A", "B": "Subject B", "C": "Subject C"}


async def seed_list(pool: asyncpg.Pool, n: int) -> uuid.UUID:
    list_id: uuid.UUID = await pool.fetchval("INSERT INTO lists (name) VALUES ('ab') RETURNING id")
    tag = uuid.uuid4().hex[:8]
    await pool.copy_records_to_table(
        "recipients",
        records=[(list_id, f"ab{i}-{tag}@example.com", {}) for i in range(n)],
        columns=["list_id", "email", "fields"],
    )
    return list_id


async def ab_campaign(
    pool: asyncpg.Pool,
    list_id: uuid.UUID,
    *,
    seed: int = 42,
    share: float = 0.3,
    metric: str = "open",
    variants: dict[str, str] = SUBJECTS,
    window: dict[str, object] | None = None,
) -> uuid.UUID:
    campaign_id: uuid.UUID = await pool.fetchval(
        """
        INSERT INTO campaigns (name, subject, html, from_email, from_name, list_id, provider,
                               status, send_at, timezone, send_window)
        VALUES ('ab', 'Base', '<p>x</p>', 'f@example.com', 'Base', $1, 'sink', 'scheduled',
                $2, 'UTC', $3)
        RETURNING id
        """,
        list_id,
        T0,
        window,
    )
    await pool.execute(
        "INSERT INTO schedules (campaign_id, send_at, timezone, revision) VALUES ($1, $2, 'UTC', 1)",
        campaign_id,
        T0,
    )
    await pool.execute(
        "INSERT INTO ab_tests (campaign_id, test_share, seed, wait_seconds, metric)"
        " VALUES ($1, $2, $3, $4, $5)",
        campaign_id,
        share,
        seed,
        int(WAIT.total_seconds()),
        metric,
    )
    for name, subject in variants.items():
        await pool.execute(
            "INSERT INTO ab_variants (campaign_id, variant, subject, from_name)"
            " VALUES ($1, $2, $3, $4)",
            campaign_id,
            name,
            subject,
            f"From {name}",
        )
    return campaign_id


@pytest.fixture(autouse=True)
async def finished_after(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Leave no A/B campaign in progress in the shared database (other tests list them)."""
    yield
    await pool.execute(
        "UPDATE campaigns SET status = 'completed' WHERE name = 'ab' AND status <> 'completed'"
    )


async def groups(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> dict[str | None, set[int]]:
    rows = await pool.fetch(
        "SELECT variant, recipient_ids FROM batch_plans WHERE campaign_id = $1", campaign_id
    )
    found: dict[str | None, set[int]] = {}
    for row in rows:
        found.setdefault(row["variant"], set()).update(row["recipient_ids"])
    return found


async def emit(
    repo: ScheduleRepository, campaign_id: uuid.UUID, now: datetime
) -> list[PendingBatch]:
    out: list[PendingBatch] = []
    while True:
        async with repo.batches_to_emit(NO_CUTOFF, 50, None, now=now) as window:
            mine = [b for b in window.batches if b.campaign_id == campaign_id]
        out += mine
        if not window.batches:
            return out


def result_of(batch: PendingBatch, status: str = "sent") -> DeliveryResult:
    return DeliveryResult(
        batch_id=batch.batch_id,
        campaign_id=batch.campaign_id,
        batch_no=batch.batch_no,
        batches_total=1000,
        audience_total=1000,
        suppressed_total=0,
        provider="sink",
        outcomes=[
            RecipientOutcome(recipient_id=rid, email=email, status=status)  # type: ignore[arg-type]
            for rid, email, _ in batch.recipients
        ],
        started_at=T0,
        finished_at=T0,
        variant=batch.variant,
    )


def opens(
    campaign_id: uuid.UUID, recipients: list[int], tag: str, kind: str = "open"
) -> list[DeliveryEvent]:
    return [
        DeliveryEvent(
            event_id=f"{tag}-{campaign_id}-{rid}",
            campaign_id=campaign_id,
            recipient_id=rid,
            email="",
            event=kind,  # type: ignore[arg-type]
            provider="mailfleet",
            occurred_at=T0 + timedelta(minutes=5),
            detail={"user_agent": "Mozilla/5.0 (Windows NT 10.0) Chrome/131"},
        )
        for rid in recipients
    ]


async def test_the_split_is_seeded_even_and_reproducible(pool: asyncpg.Pool) -> None:
    repo = ScheduleRepository(pool)
    list_id = await seed_list(pool, 1001)
    first = await ab_campaign(pool, list_id, seed=7)
    again = await ab_campaign(pool, list_id, seed=7)
    other = await ab_campaign(pool, list_id, seed=8)
    for campaign_id in (first, again, other):
        assert await repo.claim_and_plan(campaign_id, 40, now=T0) is not None
    planned = await groups(pool, first)
    test = size_tested(1001, 0.3)  # 300 (300.3 rounds down)
    sizes = {v: len(ids) for v, ids in planned.items()}
    assert sizes == {"A": 100, "B": 100, "C": 100, None: 1001 - test}
    everyone = [rid for ids in planned.values() for rid in ids]
    assert len(everyone) == len(set(everyone)) == 1001  # nobody in two groups
    assert await groups(pool, again) == planned  # the same seed: the same split
    different = await groups(pool, other)
    assert different["B"] != planned["B"] and len(different["B"]) == 100
    # Not the first ids in order: the hash spreads the test group over the list.
    assert max(planned["A"]) - min(planned["A"]) > 500
    # Each variant's content is frozen with its overrides, the rest from the campaign.
    rows = await pool.fetch(
        "SELECT v.variant, s.subject, s.from_name, s.html FROM ab_variants v"
        " JOIN content_snapshots s ON s.id = v.content_id WHERE v.campaign_id = $1",
        first,
    )
    assert {r["variant"]: (r["subject"], r["from_name"], r["html"]) for r in rows} == {
        v: (s, f"From {v}", "<p>x</p>") for v, s in SUBJECTS.items()
    }
    started = await pool.fetchval(
        "SELECT test_started_at FROM ab_tests WHERE campaign_id = $1", first
    )
    assert started == T0


async def test_the_remainder_waits_for_the_winner_decided_once(pool: asyncpg.Pool) -> None:
    repo = ScheduleRepository(pool)
    tracker = TrackerStore(pool)
    list_id = await seed_list(pool, 600)
    campaign_id = await ab_campaign(pool, list_id, share=0.5)  # 100 per variant
    assert await repo.claim_and_plan(campaign_id, 30, now=T0) is not None
    content = {
        r["variant"]: r["content_id"]
        for r in await pool.fetch(
            "SELECT variant, content_id FROM ab_variants WHERE campaign_id = $1", campaign_id
        )
    }
    test = await emit(repo, campaign_id, T0)
    assert {b.variant for b in test} == {"A", "B", "C"}  # no remainder batch went
    assert all(b.content_id == content[b.variant] for b in test if b.variant)
    by_variant: dict[str, list[int]] = {}
    for b in test:
        assert b.variant is not None
        by_variant.setdefault(b.variant, []).extend(rid for rid, _, _ in b.recipients)
    assert {v: len(ids) for v, ids in by_variant.items()} == {"A": 100, "B": 100, "C": 100}

    # The wait is not over, and the test is not accounted for yet: no decision.
    assert await repo.decide_winners(T0 + 3 * WAIT) == []
    await tracker.fold_results([result_of(b) for b in test], 0.5)
    # B: 40 % open, A: 10 %, C: 12 %; a replayed copy of the events counts nothing.
    events = (
        opens(campaign_id, by_variant["A"][:10], "o")
        + opens(campaign_id, by_variant["B"][:40], "o")
        + opens(campaign_id, by_variant["C"][:12], "o")
    )
    await tracker.fold_events(events)
    await tracker.fold_events(events)
    stats = {
        r["variant"]: (r["recipients"], r["sent"], r["unique_opens"])
        for r in await pool.fetch(
            "SELECT * FROM campaign_variant_stats WHERE campaign_id = $1", campaign_id
        )
    }
    assert stats == {"A": (100, 100, 10), "B": (100, 100, 40), "C": (100, 100, 12)}
    assert await repo.decide_winners(T0 + WAIT - timedelta(seconds=1)) == []
    assert await emit(repo, campaign_id, T0 + WAIT) == []  # still held

    # Paused when the wait ends: decided all the same, but nothing goes until resumed.
    await pool.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", campaign_id)
    decided = await asyncio.gather(*(repo.decide_winners(T0 + WAIT) for _ in range(3)))
    flat = [d for batch in decided for d in batch if d.campaign_id == campaign_id]
    assert [d.winner for d in flat] == ["B"]  # several schedulers: decided once
    assert "significant" in flat[0].reason
    row = await pool.fetchrow("SELECT * FROM ab_tests WHERE campaign_id = $1", campaign_id)
    assert (row["winner"], row["decided_at"], row["decided_by"]) == (
        "B",
        T0 + WAIT,
        "scheduler:open",
    )
    assert await emit(repo, campaign_id, T0 + WAIT) == []
    await pool.execute("UPDATE campaigns SET status = 'in_progress' WHERE id = $1", campaign_id)
    # A restart reads the stored decision: a fresh repository emits the rest with B's content.
    rest = await emit(ScheduleRepository(pool), campaign_id, T0 + WAIT)
    assert rest and all(b.variant is None and b.content_id == content["B"] for b in rest)
    mailed = [rid for b in test + rest for rid, _, _ in b.recipients]
    assert len(mailed) == len(set(mailed)) == 600  # everyone once, nobody two variants
    assert await repo.decide_winners(T0 + 2 * WAIT) == []  # not decided again


async def test_a_tie_and_a_manual_test_and_a_cancel(pool: asyncpg.Pool) -> None:
    repo = ScheduleRepository(pool)
    tracker = TrackerStore(pool)
    list_id = await seed_list(pool, 40)
    tie = await ab_campaign(pool, list_id, share=0.5, variants={"A": "a", "B": "b"})
    manual = await ab_campaign(
        pool, list_id, share=0.5, variants={"A": "a", "B": "b"}, metric="manual"
    )
    cancelled = await ab_campaign(pool, list_id, share=0.5, variants={"A": "a", "B": "b"})
    by_click = await ab_campaign(
        pool, list_id, share=0.5, variants={"A": "a", "B": "b"}, metric="click"
    )
    for campaign_id in (tie, manual, cancelled, by_click):
        assert await repo.claim_and_plan(campaign_id, 100, now=T0) is not None
        sent = await emit(repo, campaign_id, T0)
        await tracker.fold_results([result_of(b) for b in sent], 0.5)
        if campaign_id == tie:  # three opens in each variant
            await tracker.fold_events(
                [e for b in sent for e in opens(tie, [r for r, _, _ in b.recipients][:3], "t")]
            )
        if campaign_id == by_click:  # A opens more, B is clicked more: clicks decide
            ids = {b.variant: [r for r, _, _ in b.recipients] for b in sent if b.variant}
            await tracker.fold_events(
                opens(by_click, ids["A"][:8], "o") + opens(by_click, ids["B"][:6], "c", "click")
            )
    # Cancelled before a winner: never decided; the remainder goes out with the campaign's
    # own content, for the dispatchers to report it cancelled.
    await pool.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1", cancelled)
    decided = {d.campaign_id: d for d in await repo.decide_winners(T0 + WAIT)}
    assert decided[tie].winner == "A"
    assert decided[tie].reason == "highest unique open rate 0.3000 (3/10); not significant"
    assert manual not in decided  # only an admin picks it
    assert cancelled not in decided
    assert decided[by_click].winner == "B"
    assert decided[by_click].reason.startswith("highest unique click rate 0.6000 (6/10)")
    rest = await emit(repo, cancelled, T0 + WAIT)
    assert [(b.variant, b.cancelled_unsent) for b in rest] == [(None, True)]
    assert len(rest[0].recipients) == 20


async def test_batches_carry_their_variant_and_a_cancelled_remainder_is_never_sent(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    """Through the broker: each test batch's `batch.ready` names its variant and that
    variant's content; the remainder of a campaign cancelled before its winner never
    reaches a dispatcher (whose status cache could be stale): the scheduler reports it
    `cancelled` itself, in a `delivery.result`."""
    repo = ScheduleRepository(pool)
    list_id = await seed_list(pool, 30)
    campaign_id = await ab_campaign(pool, list_id, share=0.5)
    assert await repo.claim_and_plan(campaign_id, 100, now=T0) is not None
    content = {
        r["variant"]: r["content_id"]
        for r in await pool.fetch(
            "SELECT variant, content_id FROM ab_variants WHERE campaign_id = $1", campaign_id
        )
    }
    producer = EventProducer(settings)
    await producer.start()
    try:
        ctx = ServiceContext("scheduler", settings, pool, producer, asyncio.Event())
        emitter = BatchEmitter(ctx, repo, clock=lambda: T0)
        assert await emitter.emit_due() == 3
        batches = await collect_batches(settings.kafka_bootstrap_servers, campaign_id, 3)
        assert sorted((b.variant, b.content_id, len(b.recipients)) for b in batches) == [
            (v, content[v], 5) for v in ("A", "B", "C")
        ]
        await pool.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1", campaign_id)
        assert await emitter.emit_due() == 1
    finally:
        await producer.stop()
    result = await collect_results(settings.kafka_bootstrap_servers, campaign_id)
    assert result.variant is None and len(result.outcomes) == 15
    assert {o.status for o in result.outcomes} == {"cancelled"}
    with pytest.raises(TimeoutError):  # no fourth batch.ready
        await collect_batches(settings.kafka_bootstrap_servers, campaign_id, 4, timeout=3)


async def test_a_zoned_plan_is_split_by_variant_too(pool: asyncpg.Pool) -> None:
    repo = ScheduleRepository(pool)
    list_id = await seed_list(pool, 90)
    await pool.execute(
        "UPDATE recipients SET fields = jsonb_build_object('timezone',"
        " CASE WHEN id % 2 = 0 THEN 'Europe/Berlin' ELSE 'Asia/Tokyo' END)"
        " WHERE list_id = $1",
        list_id,
    )
    window = {
        "start": "00:00",
        "end": "23:59",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    }
    campaign_id = await ab_campaign(
        pool, list_id, share=0.6, variants={"A": "a", "B": "b"}, window=window
    )
    assert await repo.claim_and_plan(campaign_id, 100, now=T0) is not None
    rows = await pool.fetch(
        "SELECT zone, variant, cardinality(recipient_ids) AS n FROM batch_plans"
        " WHERE campaign_id = $1",
        campaign_id,
    )
    sizes: Counter[str | None] = Counter()
    for row in rows:
        sizes[row["variant"]] += row["n"]
    assert sizes == {"A": 27, "B": 27, None: 36}
    # One batch per zone and group: each batch is of one zone and one variant.
    assert len(rows) == len({(r["zone"], r["variant"]) for r in rows}) == 6


async def test_the_split_covers_an_audience_of_two_lists_once_each(pool: asyncpg.Pool) -> None:
    """Over the audience builder's rows (lists minus exclusions, one row per address): an
    address on both lists is in one group only, and the groups stay even."""
    first = await seed_list(pool, 30)
    second = await seed_list(pool, 30)
    # Ten addresses of the first list are on the second too.
    await pool.execute(
        "UPDATE recipients SET email = f.email FROM ("
        "  SELECT email, row_number() OVER (ORDER BY id) AS n FROM recipients"
        "   WHERE list_id = $1) f,"
        " (SELECT id, row_number() OVER (ORDER BY id) AS n FROM recipients"
        "   WHERE list_id = $2) s"
        " WHERE recipients.id = s.id AND s.n = f.n AND f.n <= 10",
        first,
        second,
    )
    campaign_id = await ab_campaign(pool, first, share=0.4)
    await pool.execute(
        "UPDATE campaigns SET audience = $2 WHERE id = $1",
        campaign_id,
        {
            "lists": [str(first), str(second)],
            "segments": [],
            "exclude_lists": [],
            "exclude_segments": [],
        },  # fmt: skip
    )
    plan = await ScheduleRepository(pool).claim_and_plan(campaign_id, 100, now=T0)
    assert plan is not None and plan.audience_total == 50
    planned = await groups(pool, campaign_id)
    assert {v: len(ids) for v, ids in planned.items()} == {"A": 7, "B": 7, "C": 6, None: 30}
    emails = await pool.fetch(
        "SELECT r.email FROM batch_plans b CROSS JOIN LATERAL unnest(b.recipient_ids) AS m(rid)"
        " JOIN recipients r ON r.id = m.rid WHERE b.campaign_id = $1",
        campaign_id,
    )
    assert len(emails) == len({r["email"] for r in emails}) == 50
