"""The queries the API calls: stats with health and timings, delivery log pages, timeline,
and the suppression list. Data folded by the tracker's own store, no broker needed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from libs.common import suppressions
from libs.common.events import DeliveryEvent, RecipientStatus
from libs.stats import read_models
from services.tracker.store import TrackerStore
from services.tracker.tests.support import make_results, new_campaign


def status_of(rid: int) -> RecipientStatus:
    return "failed" if rid in (3, 13) else "invalid" if rid == 20 else "sent"


async def folded_campaign(pool: asyncpg.Pool) -> uuid.UUID:
    """Two batches of 10 (one each second), 2 failed, 1 invalid, 3 suppressed; then events."""
    cid = await new_campaign(pool)
    store = TrackerStore(pool)
    await store.fold_results(make_results(cid, 2, 10, status_of, suppressed=3), 0.2)
    at = datetime(2030, 1, 1, 2, tzinfo=UTC)
    events = [
        DeliveryEvent(
            event_id=f"{cid}-{kind}-{rid}",
            campaign_id=cid,
            recipient_id=rid,
            email=f"r{rid}@example.com",
            event=kind,
            provider="sendgrid",
            occurred_at=at,
        )
        for kind, rids in (("delivered", range(1, 16)), ("bounce", (16,)), ("open", (1, 2)))
        for rid in rids
    ]
    await store.fold_events(events)
    return cid


async def test_campaign_report_has_rates_health_and_timings(pool: asyncpg.Pool) -> None:
    cid = await folded_campaign(pool)
    report = await read_models.campaign_report(pool, cid)
    assert report is not None
    assert {
        k: report[k] for k in ("total", "sent", "failed", "suppressed", "invalid", "pending")
    } == {
        "total": 23,
        "sent": 17,
        "failed": 2,
        "suppressed": 3,
        "invalid": 1,
        "pending": 0,
    }
    assert report["delivery_rate"] == round(17 / 20, 4)
    assert (report["delivered"], report["bounced"], report["opened"]) == (15, 1, 2)
    # delivered / (delivered + bounced + dropped + failed + invalid) = 15 / 19 → red
    assert report["delivered_rate"] == round(15 / 19, 4)
    assert report["health"] == "red"
    assert report["unique_open_rate"] == round(2 / 15, 4)
    assert report["outcome"] == "completed"
    assert report["duration_seconds"] == 1.5  # first batch start to last batch end
    assert report["emails_per_second"] == round(17 / 1.5, 1)
    assert await read_models.campaign_report(pool, uuid.uuid4()) is None


async def test_delivery_log_pages_by_cursor_and_filters_by_status(pool: asyncpg.Pool) -> None:
    cid = await folded_campaign(pool)
    first = await read_models.delivery_page(pool, cid, limit=8)
    assert [i["recipient_id"] for i in first.items] == list(range(1, 9))
    second = await read_models.delivery_page(pool, cid, cursor=first.next_cursor, limit=8)
    third = await read_models.delivery_page(pool, cid, cursor=second.next_cursor, limit=8)
    assert [i["recipient_id"] for i in second.items + third.items] == list(range(9, 21))
    assert third.next_cursor is None
    failed = await read_models.delivery_page(pool, cid, status="failed")
    assert [(i["recipient_id"], i["error"]) for i in failed.items] == [
        (3, "refused"),
        (13, "refused"),
    ]
    bounced = await read_models.delivery_page(pool, cid, status="bounced")
    assert [i["recipient_id"] for i in bounced.items] == [16]
    with pytest.raises(ValueError, match="unknown status"):
        await read_models.delivery_page(pool, cid, status="x; DROP TABLE deliveries")
    with pytest.raises(ValueError, match="cursor"):
        await read_models.delivery_page(pool, cid, cursor="abc")


async def test_timeline_counts_sends_per_second(pool: asyncpg.Pool) -> None:
    cid = await folded_campaign(pool)
    timeline = await read_models.timeline(pool, cid)
    assert [(p["sent"], p["failed"]) for p in timeline] == [(9, 1), (8, 1)]
    assert sum(p["per_second"] for p in timeline) == 17
    assert (timeline[1]["at"] - timeline[0]["at"]).total_seconds() == 1
    wide = await read_models.timeline(pool, cid, bucket_seconds=60)
    assert [(p["sent"], p["per_second"]) for p in wide] == [(17, round(17 / 60, 1))]


async def test_suppression_list_add_list_remove(pool: asyncpg.Pool) -> None:
    email = f"Someone-{uuid.uuid4().hex[:8]}@Example.com"
    assert await suppressions.add_suppression(pool, email, source="admin")
    assert not await suppressions.add_suppression(pool, email.lower(), reason="bounce")
    found = await read_models.list_suppressions(pool, email=email)
    assert [(i["email"], i["reason"]) for i in found.items] == [(email.lower(), "manual")]
    page = await read_models.list_suppressions(pool, limit=1)
    assert len(page.items) == 1 and page.next_cursor == page.items[0]["email"]
    async with pool.acquire() as conn, conn.transaction():
        assert await suppressions.remove_suppression(conn, email, privileged=False) == "manual"
        assert await suppressions.remove_suppression(conn, email, privileged=False) is None
    with pytest.raises(ValueError):
        await suppressions.add_suppression(pool, email, reason="because")
