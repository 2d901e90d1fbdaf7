"""Campaigns: create, read with stats, edit, schedule (time zones), unschedule, duplicate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.api.tests.support import Api, find_event

PROBLEM = "application/problem+json"


async def _new_list(api: Api) -> str:
    answer = await api.client.post("/api/v1/lists", json={"name": "c"}, headers=api.auth("editor"))
    return str(answer.json()["id"])


def _campaign(list_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "March news",
        "subject": "Hello {{ first_name }}",
        "html": "<p>Hi {{ first_name }}</p>",
        "text": "Hi {{ first_name }}",
        "from_email": "news@example.com",
        "from_name": "News",
        "list_id": list_id,
    }
    return body | overrides


async def _new_campaign(api: Api, **overrides: Any) -> dict[str, Any]:
    list_id = await _new_list(api)
    answer = await api.client.post(
        "/api/v1/campaigns", json=_campaign(list_id, **overrides), headers=api.auth("editor")
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def test_create_is_draft_with_default_provider(api: Api) -> None:
    campaign = await _new_campaign(api)
    assert campaign["status"] == "draft"
    assert campaign["provider"] == api.settings.default_provider
    assert campaign["send_at"] is None and campaign["schedule_revision"] == 0
    assert campaign["stats"]["total"] == 0
    explicit = await _new_campaign(api, provider="smtp")
    assert explicit["provider"] == "smtp"


async def test_create_validation(api: Api) -> None:
    list_id = await _new_list(api)
    cases = {
        "body.provider": _campaign(list_id, provider="carrier-pigeon"),
        "body.from_email": _campaign(list_id, from_email="not an address"),
        "body.list_id": _campaign(str(uuid.uuid4())),
        "body.subject": {k: v for k, v in _campaign(list_id).items() if k != "subject"},
        "body.name": _campaign(list_id, name="nul\u0000byte"),
        "body.extra": _campaign(list_id, extra="unknown fields are refused"),
    }
    for field, body in cases.items():
        answer = await api.client.post("/api/v1/campaigns", json=body, headers=api.auth("editor"))
        assert answer.status_code == 422, (field, answer.text)
        assert answer.headers["content-type"] == PROBLEM
        assert field in [e["field"] for e in answer.json()["errors"]], answer.json()


async def test_template_syntax_error_names_part_and_line(api: Api) -> None:
    list_id = await _new_list(api)
    html = "<p>line one</p>\n<p>{{ first_name }</p>\n"
    answer = await api.client.post(
        "/api/v1/campaigns", json=_campaign(list_id, html=html), headers=api.auth("editor")
    )
    assert answer.status_code == 422
    problem = answer.json()
    assert "html line 2" in problem["detail"]
    assert problem["errors"] == [
        {"field": "body.html", "message": problem["errors"][0]["message"], "line": 2}
    ]


async def test_get_with_stats_before_and_after_planning(api: Api, pool: asyncpg.Pool) -> None:
    campaign = await _new_campaign(api)
    await pool.executemany(
        "INSERT INTO recipients (list_id, email) VALUES ($1, $2)",
        [(uuid.UUID(campaign["list_id"]), f"s{i}@example.com") for i in range(4)],
    )
    path = f"/api/v1/campaigns/{campaign['id']}"
    before = (await api.client.get(path, headers=api.auth("viewer"))).json()
    assert before["stats"]["total"] == 4 and before["stats"]["pending"] == 4
    assert before["stats"]["delivery_rate"] == 0

    # The tracker's counters, as it writes them.
    await pool.execute(
        "INSERT INTO campaign_stats (campaign_id, audience_total, sent, failed, suppressed,"
        " invalid, unknown, cancelled) VALUES ($1, 10, 6, 1, 2, 0, 0, 0)",
        uuid.UUID(campaign["id"]),
    )
    after = (await api.client.get(path, headers=api.auth("viewer"))).json()["stats"]
    # The issue-2 fields, unchanged; issue 5 added provider-event fields beside them.
    expected = {
        "total": 10,
        "sent": 6,
        "failed": 1,
        "suppressed": 2,
        "invalid": 0,
        "unknown": 0,
        "cancelled": 0,
        "pending": 1,
        "delivery_rate": 0.75,
    }
    assert {name: after[name] for name in expected} == expected
    missing = await api.client.get(f"/api/v1/campaigns/{uuid.uuid4()}", headers=api.auth("viewer"))
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM


async def test_schedule_0900_kolkata_is_0330_utc_and_published(api: Api) -> None:
    campaign = await _new_campaign(api)
    answer = await api.client.post(
        f"/api/v1/campaigns/{campaign['id']}/schedule",
        json={"send_at": "2030-03-01T09:00", "timezone": "Asia/Kolkata"},
        headers=api.auth("editor"),
    )
    assert answer.status_code == 200, answer.text
    scheduled = answer.json()
    assert scheduled["status"] == "scheduled"
    assert datetime.fromisoformat(scheduled["send_at"]) == datetime(2030, 3, 1, 3, 30, tzinfo=UTC)
    assert scheduled["send_at"].endswith(("Z", "+00:00"))
    assert scheduled["timezone"] == "Asia/Kolkata"
    assert scheduled["schedule_revision"] == 1

    key, event = await find_event(
        api.settings, "campaign.scheduled", lambda e: e.get("campaign_id") == campaign["id"]
    )
    assert key == campaign["id"].encode()
    assert datetime.fromisoformat(event["send_at"]) == datetime(2030, 3, 1, 3, 30, tzinfo=UTC)
    assert (event["timezone"], event["revision"], event["schema_version"]) == (
        "Asia/Kolkata",
        1,
        1,
    )

    # Re-scheduling with an explicit offset: an instant, shown in the zone given.
    again = await api.client.post(
        f"/api/v1/campaigns/{campaign['id']}/schedule",
        json={"send_at": "2030-03-02T10:00:00+02:00", "timezone": "Europe/Berlin"},
        headers=api.auth("editor"),
    )
    assert again.status_code == 200
    assert datetime.fromisoformat(again.json()["send_at"]) == datetime(2030, 3, 2, 8, tzinfo=UTC)
    assert again.json()["schedule_revision"] == 2
    _, second = await find_event(
        api.settings,
        "campaign.scheduled",
        lambda e: e.get("campaign_id") == campaign["id"] and e.get("revision") == 2,
    )
    assert second["timezone"] == "Europe/Berlin"


async def test_schedule_without_send_at_means_now_in_default_zone(api: Api) -> None:
    campaign = await _new_campaign(api)
    before = datetime.now(UTC)
    answer = await api.client.post(
        f"/api/v1/campaigns/{campaign['id']}/schedule", headers=api.auth("editor")
    )
    assert answer.status_code == 200, answer.text
    send_at = datetime.fromisoformat(answer.json()["send_at"])
    assert before - timedelta(seconds=1) <= send_at <= datetime.now(UTC)
    assert answer.json()["timezone"] == api.settings.default_timezone


async def test_schedule_errors(api: Api, pool: asyncpg.Pool) -> None:
    campaign = await _new_campaign(api)
    path = f"/api/v1/campaigns/{campaign['id']}/schedule"
    bad_zone = await api.client.post(
        path,
        json={"send_at": "2030-03-01T09:00:00", "timezone": "Mars/Base"},
        headers=api.auth("editor"),
    )
    assert bad_zone.status_code == 422
    assert bad_zone.json()["errors"][0]["field"] == "body.timezone"
    assert "Mars/Base" in bad_zone.json()["detail"]
    bad_time = await api.client.post(
        path, json={"send_at": "next tuesday"}, headers=api.auth("editor")
    )
    assert bad_time.status_code == 422 and bad_time.json()["errors"][0]["field"] == "body.send_at"

    too_early = await api.client.post(
        path,
        json={"send_at": "0001-01-01T00:00:00", "timezone": "Asia/Kolkata"},
        headers=api.auth("editor"),
    )
    assert too_early.status_code == 422
    assert too_early.json()["errors"][0]["field"] == "body.send_at"

    missing = await api.client.post(
        f"/api/v1/campaigns/{uuid.uuid4()}/schedule", headers=api.auth("editor")
    )
    assert missing.status_code == 404

    # The scheduler has started it: no more (re)scheduling.
    await pool.execute(
        "UPDATE campaigns SET status = 'in_progress' WHERE id = $1", uuid.UUID(campaign["id"])
    )
    started = await api.client.post(path, headers=api.auth("editor"))
    assert started.status_code == 409
    assert started.headers["content-type"] == PROBLEM
    assert "in_progress" in started.json()["detail"]
    viewer = await api.client.post(path, headers=api.auth("viewer"))
    assert viewer.status_code == 403


async def test_edit_only_while_draft_or_scheduled(api: Api, pool: asyncpg.Pool) -> None:
    campaign = await _new_campaign(api)
    path = f"/api/v1/campaigns/{campaign['id']}"
    edited = await api.client.patch(
        path, json={"subject": "New {{ first_name }}", "text": None}, headers=api.auth("editor")
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["subject"] == "New {{ first_name }}"
    assert edited.json()["text"] is None
    assert edited.json()["html"] == campaign["html"]

    broken = await api.client.patch(path, json={"subject": "{% if %}"}, headers=api.auth("editor"))
    assert broken.status_code == 422 and broken.json()["errors"][0]["field"] == "body.subject"
    null_name = await api.client.patch(path, json={"name": None}, headers=api.auth("editor"))
    assert null_name.status_code == 422

    await pool.execute(
        "UPDATE campaigns SET status = 'completed' WHERE id = $1", uuid.UUID(campaign["id"])
    )
    late = await api.client.patch(path, json={"name": "too late"}, headers=api.auth("editor"))
    assert late.status_code == 409 and "completed" in late.json()["detail"]


async def test_unschedule_returns_to_draft_and_publishes(api: Api) -> None:
    campaign = await _new_campaign(api)
    base = f"/api/v1/campaigns/{campaign['id']}"
    not_yet = await api.client.post(f"{base}/unschedule", headers=api.auth("editor"))
    assert not_yet.status_code == 409
    await api.client.post(f"{base}/schedule", json={}, headers=api.auth("editor"))
    answer = await api.client.post(f"{base}/unschedule", headers=api.auth("editor"))
    assert answer.status_code == 200
    assert answer.json()["status"] == "draft" and answer.json()["send_at"] is None
    assert answer.json()["schedule_revision"] == 2
    key, event = await find_event(
        api.settings, "campaign.control", lambda e: e.get("campaign_id") == campaign["id"]
    )
    assert key == campaign["id"].encode()
    assert (event["action"], event["revision"]) == ("unschedule", 2)


async def test_duplicate_makes_a_new_draft(api: Api) -> None:
    campaign = await _new_campaign(api)
    base = f"/api/v1/campaigns/{campaign['id']}"
    await api.client.post(f"{base}/schedule", json={}, headers=api.auth("editor"))
    answer = await api.client.post(f"{base}/duplicate", headers=api.auth("editor"))
    assert answer.status_code == 201
    copy = answer.json()
    assert copy["id"] != campaign["id"]
    assert copy["status"] == "draft" and copy["send_at"] is None
    assert copy["name"] == "March news (copy)"
    for field in ("subject", "html", "text", "from_email", "from_name", "list_id", "provider"):
        assert copy[field] == campaign[field]


async def test_preview_renders_for_a_recipient(api: Api, pool: asyncpg.Pool) -> None:
    campaign = await _new_campaign(api, html="<p>Hi {{ first_name }} &lt;{{ email }}&gt;</p>")
    await pool.execute(
        "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, $3)",
        uuid.UUID(campaign["list_id"]),
        "ada@example.com",
        {"first_name": "<Ada>"},
    )
    base = f"/api/v1/campaigns/{campaign['id']}/preview"
    answer = await api.client.get(
        base, params={"recipient": "Ada@Example.com"}, headers=api.auth("viewer")
    )
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["subject"] == "Hello <Ada>"
    assert preview["html"] == "<p>Hi &lt;Ada&gt; &lt;ada@example.com&gt;</p>"
    assert preview["text"] == "Hi <Ada>"
    blank = (await api.client.get(base, headers=api.auth("viewer"))).json()
    assert blank["subject"] == "Hello " and blank["recipient"] is None
    for who in ("zed@example.com", "9" * 30):
        unknown = await api.client.get(base, params={"recipient": who}, headers=api.auth("viewer"))
        assert unknown.status_code == 404, who

    await api.client.patch(
        f"/api/v1/campaigns/{campaign['id']}",
        json={"text": "{{ 1 / 0 }}"},
        headers=api.auth("editor"),
    )
    failing = await api.client.get(base, headers=api.auth("viewer"))
    assert failing.status_code == 422 and "render" in failing.json()["detail"]


async def test_list_campaigns_paginates_and_filters(api: Api) -> None:
    ids = {(await _new_campaign(api, name=f"p{i}"))["id"] for i in range(3)}
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": 2, "status": "draft"}
        if cursor:
            params["cursor"] = cursor
        page = (
            await api.client.get("/api/v1/campaigns", params=params, headers=api.auth("viewer"))
        ).json()
        assert all(c["status"] == "draft" for c in page["items"])
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids <= set(seen) and len(seen) == len(set(seen))
    bad = await api.client.get("/api/v1/campaigns?status=exploded", headers=api.auth("viewer"))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.status"
