"""A campaign's stats, delivery log and timeline, read from tracker rows inserted here."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.api.tests.support import Api

PROBLEM = "application/problem+json"
START = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


async def _new_campaign(api: Api) -> uuid.UUID:
    listed = await api.client.post(
        "/api/v1/lists", json={"name": "stats"}, headers=api.auth("editor")
    )
    answer = await api.client.post(
        "/api/v1/campaigns",
        json={
            "name": "stats",
            "subject": "s",
            "html": "<p>h</p>",
            "from_email": "news@example.com",
            "list_id": listed.json()["id"],
        },
        headers=api.auth("editor"),
    )
    assert answer.status_code == 201, answer.text
    return uuid.UUID(answer.json()["id"])


async def _stats(api: Api, campaign_id: uuid.UUID) -> dict[str, Any]:
    answer = await api.client.get(f"/api/v1/campaigns/{campaign_id}", headers=api.auth("viewer"))
    assert answer.status_code == 200, answer.text
    stats: dict[str, Any] = answer.json()["stats"]
    return stats


async def test_stats_show_provider_events_rates_health_and_timings(
    api: Api, pool: asyncpg.Pool
) -> None:
    campaign_id = await _new_campaign(api)
    before = await _stats(api, campaign_id)
    assert (before["delivered"], before["health"], before["duration_seconds"]) == (0, None, None)

    await pool.execute(
        """
        INSERT INTO campaign_stats (campaign_id, audience_total, batches_total, batches_done,
            sent, failed, suppressed, delivered, bounced, opens, unique_opens, clicks,
            unique_clicks, unsubscribes, spam_reports, send_started_at, send_finished_at,
            outcome)
        VALUES ($1, 110, 2, 2, 100, 0, 10, 97, 3, 80, 50, 12, 10, 2, 1, $2, $3, 'completed')
        """,
        campaign_id,
        START,
        START + timedelta(seconds=4),
    )
    stats = await _stats(api, campaign_id)
    expected = {
        # issue 2's fields
        "total": 110,
        "sent": 100,
        "failed": 0,
        "suppressed": 10,
        "invalid": 0,
        "pending": 0,
        "delivery_rate": 1.0,
        # from the provider's events
        "delivered": 97,
        "bounced": 3,
        "opened": 50,
        "opens": 80,
        "clicked": 10,
        "clicks": 12,
        "unsubscribed": 2,
        "spam_reports": 1,
        "delivered_rate": 0.97,
        "unique_open_rate": round(50 / 97, 4),
        "unique_click_rate": round(10 / 97, 4),
        "health": "green",
        "outcome": "completed",
        "duration_seconds": 4.0,
        "emails_per_second": 25.0,
    }
    assert {name: stats[name] for name in expected} == expected
    assert datetime.fromisoformat(stats["started_at"]) == START


@pytest.mark.parametrize(
    ("delivered", "bounced", "health"),
    [(96, 4, "green"), (95, 5, "yellow"), (80, 20, "yellow"), (79, 21, "red")],
)
async def test_health_follows_the_delivered_share(
    api: Api, pool: asyncpg.Pool, delivered: int, bounced: int, health: str
) -> None:
    campaign_id = await _new_campaign(api)
    await pool.execute(
        "INSERT INTO campaign_stats (campaign_id, audience_total, sent, delivered, bounced)"
        " VALUES ($1, 100, 100, $2, $3)",
        campaign_id,
        delivered,
        bounced,
    )
    assert (await _stats(api, campaign_id))["health"] == health


async def _insert_deliveries(pool: asyncpg.Pool, campaign_id: uuid.UUID) -> None:
    rows = [
        (campaign_id, rid, f"r{rid}@example.com", status, f"{campaign_id}:0")
        for rid, status in enumerate(["sent", "sent", "failed", "sent", "invalid"], start=1)
    ]
    await pool.executemany(
        "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id)"
        " VALUES ($1, $2, $3, $4, $5)",
        rows,
    )
    await pool.execute(
        "UPDATE deliveries SET bounced_at = $2, bounce_type = 'bounce'"
        " WHERE campaign_id = $1 AND recipient_id = 4",
        campaign_id,
        START,
    )


async def test_delivery_log_pages_and_filters(api: Api, pool: asyncpg.Pool) -> None:
    campaign_id = await _new_campaign(api)
    await _insert_deliveries(pool, campaign_id)
    path = f"/api/v1/campaigns/{campaign_id}/deliveries"

    seen: list[int] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.client.get(path, params=params, headers=api.auth("viewer"))).json()
        seen += [item["recipient_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [1, 2, 3, 4, 5]

    bounced = await api.client.get(path, params={"status": "bounced"}, headers=api.auth("viewer"))
    [item] = bounced.json()["items"]
    assert (item["recipient_id"], item["status"], item["bounce_type"]) == (4, "sent", "bounce")
    failed = await api.client.get(path, params={"status": "failed"}, headers=api.auth("viewer"))
    assert [i["email"] for i in failed.json()["items"]] == ["r3@example.com"]


async def test_delivery_log_refuses_bad_queries(api: Api) -> None:
    campaign_id = await _new_campaign(api)
    path = f"/api/v1/campaigns/{campaign_id}/deliveries"
    for params, field in (({"status": "lost"}, "query.status"), ({"cursor": "x"}, "query.cursor")):
        answer = await api.client.get(path, params=params, headers=api.auth("viewer"))
        assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM
        assert [e["field"] for e in answer.json()["errors"]] == [field]
    unknown = await api.client.get(
        f"/api/v1/campaigns/{uuid.uuid4()}/deliveries", headers=api.auth("viewer")
    )
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM
    anonymous = await api.client.get(path)
    assert anonymous.status_code == 401


async def test_timeline_gives_sends_per_second(api: Api, pool: asyncpg.Pool) -> None:
    campaign_id = await _new_campaign(api)
    # Three batches: two finish in the first second, one in the third.
    await pool.executemany(
        "INSERT INTO tracker_batches (batch_id, campaign_id, recipients, batch_no, sent, failed,"
        " started_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (f"{campaign_id}:{n}", campaign_id, 10, n, sent, 10 - sent, START, START + offset)
            for n, sent, offset in (
                (0, 10, timedelta(milliseconds=200)),
                (1, 8, timedelta(milliseconds=900)),
                (2, 10, timedelta(seconds=2, milliseconds=100)),
            )
        ],
    )
    path = f"/api/v1/campaigns/{campaign_id}/timeline"
    timeline = (await api.client.get(path, headers=api.auth("viewer"))).json()
    assert timeline["bucket_seconds"] == 1
    points = [
        (datetime.fromisoformat(p["at"]), p["sent"], p["failed"], p["batches"], p["per_second"])
        for p in timeline["points"]
    ]
    assert points == [
        (START, 18, 2, 2, 18.0),
        (START + timedelta(seconds=2), 10, 0, 1, 10.0),
    ]
    wide = (
        await api.client.get(path, params={"bucket_seconds": 4}, headers=api.auth("viewer"))
    ).json()
    assert [(p["sent"], p["per_second"]) for p in wide["points"]] == [(28, 7.0)]
    unknown = await api.client.get(
        f"/api/v1/campaigns/{uuid.uuid4()}/timeline", headers=api.auth("viewer")
    )
    assert unknown.status_code == 404
