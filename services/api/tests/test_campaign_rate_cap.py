"""A campaign's rate cap on the API (issue 17 item 4): `max_per_hour` on create and update,
validated (422 naming the field), shown on GET, and changeable while the campaign sends
(alone: its content stays frozen), with an audit record."""

from __future__ import annotations

import uuid

import asyncpg

from services.api.tests.support import Api
from services.api.tests.test_campaign_control import _in_progress
from services.api.tests.test_campaigns import _new_campaign


async def test_the_cap_is_stored_shown_changed_and_cleared(api: Api, pool: asyncpg.Pool) -> None:
    campaign = await _new_campaign(api, max_per_hour=50_000)
    assert campaign["max_per_hour"] == 50_000
    stored = await pool.fetchval(
        "SELECT max_per_hour FROM campaigns WHERE id = $1", uuid.UUID(campaign["id"])
    )
    assert stored == 50_000
    url = f"/api/v1/campaigns/{campaign['id']}"
    shown = (await api.client.get(url, headers=api.auth("viewer"))).json()
    assert shown["max_per_hour"] == 50_000
    changed = await api.client.patch(url, json={"max_per_hour": 1200}, headers=api.auth("editor"))
    assert changed.status_code == 200, changed.text
    assert changed.json()["max_per_hour"] == 1200
    cleared = await api.client.patch(url, json={"max_per_hour": None}, headers=api.auth("editor"))
    assert cleared.json()["max_per_hour"] is None
    assert (await _new_campaign(api))["max_per_hour"] is None
    listed = await api.client.get("/api/v1/campaigns?limit=200", headers=api.auth("viewer"))
    assert any("max_per_hour" in item for item in listed.json()["items"])


async def test_bad_caps_are_422_naming_the_field(api: Api) -> None:
    campaign = await _new_campaign(api)
    for value in (0, -5, 10_000_001, "lots", 1.5, True):
        answer = await api.client.patch(
            f"/api/v1/campaigns/{campaign['id']}",
            json={"max_per_hour": value},
            headers=api.auth("editor"),
        )
        assert answer.status_code == 422, (value, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "max_per_hour" in answer.text
    created = await api.client.post(
        "/api/v1/campaigns",
        json={"name": "x", "subject": "s", "html": "<p>h</p>", "from_email": "a@example.com",
              "list_id": campaign["list_id"], "max_per_hour": 0},
        headers=api.auth("editor"),
    )  # fmt: skip
    assert created.status_code == 422 and "max_per_hour" in created.text


async def test_the_cap_changes_while_sending_but_the_content_does_not(
    api: Api, pool: asyncpg.Pool
) -> None:
    campaign_id = await _in_progress(api, pool)
    url = f"/api/v1/campaigns/{campaign_id}"
    capped = await api.client.patch(url, json={"max_per_hour": 600}, headers=api.auth("editor"))
    assert capped.status_code == 200, capped.text
    assert capped.json()["max_per_hour"] == 600 and capped.json()["status"] == "in_progress"
    both = await api.client.patch(
        url, json={"max_per_hour": 700, "subject": "new"}, headers=api.auth("editor")
    )
    assert both.status_code == 409, both.text  # content is frozen: nothing changed
    assert await pool.fetchval(
        "SELECT max_per_hour FROM campaigns WHERE id = $1", uuid.UUID(campaign_id)
    ) == 600  # fmt: skip
    audit = await pool.fetch(
        "SELECT details FROM audit_log WHERE action = 'campaign.rate_cap' AND target_id = $1",
        campaign_id,
    )
    assert [a["details"]["max_per_hour"] for a in audit] == [600]
    await pool.execute(
        "UPDATE campaigns SET status = 'completed' WHERE id = $1", uuid.UUID(campaign_id)
    )
    ended = await api.client.patch(url, json={"max_per_hour": 100}, headers=api.auth("editor"))
    assert ended.status_code == 409, ended.text
