"""Local-time delivery and send windows in the API (issue 17, items 2 and 3): the list's
default zone, scheduling with `local_time` and `send_window`, their validation, and the
progress per zone read from the scheduler's plan."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.api.tests.support import Api, find_event
from services.scheduler.repository import ScheduleRepository

PROBLEM = "application/problem+json"
WINDOW = {"start": "08:00", "end": "20:00", "days": ["mon", "tue", "wed", "thu", "fri"]}


async def _list(api: Api, **body: Any) -> dict[str, Any]:
    answer = await api.client.post(
        "/api/v1/lists", json={"name": "lt"} | body, headers=api.auth("editor")
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def _campaign(api: Api, list_id: str) -> dict[str, Any]:
    body = {
        "name": "lt",
        "subject": "Hi",
        "html": "<p>Hi</p>",
        "from_email": "news@example.com",
        "list_id": list_id,
    }
    answer = await api.client.post("/api/v1/campaigns", json=body, headers=api.auth("editor"))
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def test_a_lists_default_zone_is_set_changed_and_validated(api: Api) -> None:
    created = await _list(api, default_timezone="Europe/Berlin")
    assert created["default_timezone"] == "Europe/Berlin"
    path = f"/api/v1/lists/{created['id']}"
    changed = await api.client.patch(
        path, json={"default_timezone": "Asia/Kathmandu"}, headers=api.auth("editor")
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["default_timezone"] == "Asia/Kathmandu"
    assert changed.json()["name"] == "lt"
    read = await api.client.get(path, headers=api.auth("viewer"))
    assert read.json()["default_timezone"] == "Asia/Kathmandu"
    cleared = await api.client.patch(
        path, json={"default_timezone": None}, headers=api.auth("editor")
    )
    assert cleared.json()["default_timezone"] is None
    for bad in ({"default_timezone": "Mars/Base"}, {"default_timezone": "x" * 65}):
        refused = await api.client.patch(path, json=bad, headers=api.auth("editor"))
        assert refused.status_code == 422 and refused.headers["content-type"] == PROBLEM
        assert refused.json()["errors"][0]["field"] == "body.default_timezone"
    on_create = await api.client.post(
        "/api/v1/lists",
        json={"name": "x", "default_timezone": "Nowhere"},
        headers=api.auth("editor"),
    )
    assert on_create.status_code == 422
    assert on_create.json()["errors"][0]["field"] == "body.default_timezone"
    no_name = await api.client.patch(path, json={"name": None}, headers=api.auth("editor"))
    assert no_name.status_code == 422 and no_name.json()["errors"][0]["field"] == "body.name"
    viewer = await api.client.patch(path, json={"name": "y"}, headers=api.auth("viewer"))
    assert viewer.status_code == 403
    missing = await api.client.patch(
        f"/api/v1/lists/{uuid.uuid4()}", json={"name": "y"}, headers=api.auth("editor")
    )
    assert missing.status_code == 404


async def test_local_time_schedule_starts_when_utc_plus_14_reaches_it(api: Api) -> None:
    campaign = await _campaign(api, (await _list(api))["id"])
    answer = await api.client.post(
        f"/api/v1/campaigns/{campaign['id']}/schedule",
        json={
            "send_at": "2030-03-01T09:00",
            "timezone": "Asia/Kolkata",
            "local_time": True,
            "send_window": WINDOW,
        },
        headers=api.auth("editor"),
    )
    assert answer.status_code == 200, answer.text
    scheduled = answer.json()
    assert datetime.fromisoformat(scheduled["send_at"]) == datetime(2030, 2, 28, 19, tzinfo=UTC)
    assert scheduled["local_time"] is True
    assert scheduled["local_send_at"] == "2030-03-01T09:00:00"
    # Its documented schema admits a time without offset (`format: date-time` does not:
    # the OpenAPI fuzz test found the listing violating it).
    document = (await api.client.get("/openapi.json")).json()
    field = document["components"]["schemas"]["CampaignOut"]["properties"]["local_send_at"]
    text = next(s for s in field["anyOf"] if s.get("type") == "string")
    assert "format" not in text and re.match(text["pattern"], scheduled["local_send_at"])
    assert scheduled["send_window"] == WINDOW
    _, event = await find_event(
        api.settings, "campaign.scheduled", lambda e: e.get("campaign_id") == campaign["id"]
    )
    assert event["local_time"] is True and event["local_send_at"] == "2030-03-01T09:00:00"
    assert event["send_window"] == WINDOW
    # Unscheduled, it forgets all of it.
    back = await api.client.post(
        f"/api/v1/campaigns/{campaign['id']}/unschedule", headers=api.auth("editor")
    )
    assert back.json()["local_time"] is False and back.json()["send_window"] is None


async def test_local_time_and_window_errors_name_the_field(api: Api) -> None:
    campaign = await _campaign(api, (await _list(api))["id"])
    path = f"/api/v1/campaigns/{campaign['id']}/schedule"
    cases = [
        ({"local_time": True}, "body.send_at"),
        ({"local_time": True, "send_at": "2030-03-01T09:00:00+01:00"}, "body.send_at"),
        ({"local_time": True, "send_at": "0001-01-01T09:00"}, "body.send_at"),
        ({"send_window": {"start": "8", "end": "20:00"}}, "body.send_window.start"),
        ({"send_window": {"start": "08:00", "end": "24:00"}}, "body.send_window.end"),
        ({"send_window": {"start": "20:00", "end": "08:00"}}, "body.send_window"),
        ({"send_window": {"start": "08:00", "end": "20:00", "days": []}}, "body.send_window.days"),
        ({"send_window": {"start": "08:00", "end": "20:00", "days": ["sun", "sun"]}}, "body.send_window"),
        ({"send_window": {"start": "08:00", "end": "20:00", "hours": 3}}, "body.send_window.hours"),
    ]  # fmt: skip
    for body, field in cases:
        refused = await api.client.post(path, json=body, headers=api.auth("editor"))
        assert refused.status_code == 422, (body, refused.text)
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["errors"][0]["field"] == field, (body, refused.json())
    still = await api.client.get(f"/api/v1/campaigns/{campaign['id']}", headers=api.auth("viewer"))
    assert still.json()["status"] == "draft"


async def test_progress_shows_recipients_waiting_per_zone(api: Api, pool: asyncpg.Pool) -> None:
    the_list = await _list(api, default_timezone="Europe/Berlin")
    zones = ["Asia/Kolkata"] * 3 + ["America/New_York"] * 2 + ["Mars/Base", None]
    await pool.copy_records_to_table(
        "recipients",
        records=[
            (
                uuid.UUID(the_list["id"]),
                f"p{i}-{uuid.uuid4().hex[:6]}@example.com",
                {"timezone": z} if z else {},
            )
            for i, z in enumerate(zones)
        ],  # fmt: skip
        columns=["list_id", "email", "fields"],
    )
    campaign = await _campaign(api, the_list["id"])
    answer = await api.client.post(
        f"/api/v1/campaigns/{campaign['id']}/schedule",
        json={"send_at": "2030-03-01T09:00", "local_time": True},
        headers=api.auth("editor"),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["waiting_by_zone"] is None  # not planned yet
    # The scheduler plans it with its clock at the start instant.
    repo = ScheduleRepository(pool)
    plan = await repo.claim_and_plan(
        uuid.UUID(campaign["id"]), 2, now=datetime(2030, 2, 28, 19, tzinfo=UTC)
    )
    assert plan is not None
    read = await api.client.get(f"/api/v1/campaigns/{campaign['id']}", headers=api.auth("viewer"))
    shown = read.json()
    assert shown["invalid_timezones"] == 1
    waiting = [(w["zone"], w["due_at"], w["recipients"]) for w in shown["waiting_by_zone"]]
    assert [(z, datetime.fromisoformat(d), n) for z, d, n in waiting] == [
        ("Asia/Kolkata", datetime(2030, 3, 1, 3, 30, tzinfo=UTC), 3),
        ("Europe/Berlin", datetime(2030, 3, 1, 8, 0, tzinfo=UTC), 2),
        ("America/New_York", datetime(2030, 3, 1, 14, 0, tzinfo=UTC), 2),
    ]
    # Kolkata's batches go: it no longer waits.
    async with repo.batches_to_emit(
        datetime(1970, 1, 1, tzinfo=UTC), 10_000, now=datetime(2030, 3, 1, 3, 30, tzinfo=UTC)
    ):
        pass
    read = await api.client.get(f"/api/v1/campaigns/{campaign['id']}", headers=api.auth("viewer"))
    assert [w["zone"] for w in read.json()["waiting_by_zone"]] == [
        "Europe/Berlin",
        "America/New_York",
    ]
    await pool.execute(
        "UPDATE campaigns SET status = 'completed' WHERE id = $1", uuid.UUID(campaign["id"])
    )
