"""The reputation guard's side of the API: per-campaign thresholds (field `guard` on create
and update, stored in PostgreSQL), the guard's pause reason on GET, and the resume time
that starts the guard's hold-off."""

from __future__ import annotations

import uuid

import asyncpg

from services.api.tests.support import Api
from services.api.tests.test_campaign_control import _in_progress, _post
from services.api.tests.test_campaigns import _new_campaign


async def test_thresholds_are_stored_and_shown(api: Api, pool: asyncpg.Pool) -> None:
    campaign = await _new_campaign(api, guard={"max_hard_bounce_rate": 0.02, "min_sends": 500})
    assert campaign["guard"]["max_hard_bounce_rate"] == 0.02
    assert campaign["guard"]["min_sends"] == 500
    stored = await pool.fetchval(
        "SELECT guard FROM campaigns WHERE id = $1", uuid.UUID(campaign["id"])
    )
    assert stored == {"max_hard_bounce_rate": 0.02, "min_sends": 500}  # only what was given
    answer = await api.client.patch(
        f"/api/v1/campaigns/{campaign['id']}",
        json={"guard": {"max_complaint_rate": 0.0005, "enabled": True}},
        headers=api.auth("editor"),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["guard"]["max_complaint_rate"] == 0.0005
    assert answer.json()["guard"]["max_hard_bounce_rate"] is None  # replaced as a whole
    cleared = await api.client.patch(
        f"/api/v1/campaigns/{campaign['id']}", json={"guard": None}, headers=api.auth("editor")
    )
    assert cleared.json()["guard"] is None
    plain = await _new_campaign(api)
    assert plain["guard"] is None


async def test_bad_thresholds_are_422_naming_the_field(api: Api) -> None:
    for guard, field in (
        ({"max_hard_bounce_rate": 1.5}, "max_hard_bounce_rate"),
        ({"min_sends": 0}, "min_sends"),
        ({"max_complaint_rate": "lots"}, "max_complaint_rate"),
        ({"bounces": 0.1}, "bounces"),
    ):
        campaign = await _new_campaign(api)
        answer = await api.client.patch(
            f"/api/v1/campaigns/{campaign['id']}",
            json={"guard": guard},
            headers=api.auth("editor"),
        )
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert field in answer.text


async def test_guard_pause_reason_shows_and_resume_starts_the_hold_off(
    api: Api, pool: asyncpg.Pool
) -> None:
    campaign_id = await _in_progress(api, pool)
    # What the scheduler writes when the guard asks for a pause (origin `guard`).
    await pool.execute(
        "UPDATE campaigns SET status = 'paused', paused_by = 'guard',"
        " pause_reason = 'hard_bounce_rate 0.10 > 0.05' WHERE id = $1",
        uuid.UUID(campaign_id),
    )
    shown = (
        await api.client.get(f"/api/v1/campaigns/{campaign_id}", headers=api.auth("viewer"))
    ).json()
    assert shown["paused_by"] == "guard" and shown["pause_reason"] == "hard_bounce_rate 0.10 > 0.05"
    _, resumed = await _post(api, campaign_id, "resume")
    assert resumed["status"] == "in_progress" and resumed["pause_reason"] is None
    resumed_at = await pool.fetchval(
        "SELECT guard_resumed_at FROM campaigns WHERE id = $1", uuid.UUID(campaign_id)
    )
    assert resumed_at is not None
    # An admin's own pause and resume is no guard pause: the hold-off is not renewed.
    await _post(api, campaign_id, "pause")
    await _post(api, campaign_id, "resume")
    again = await pool.fetchval(
        "SELECT guard_resumed_at FROM campaigns WHERE id = $1", uuid.UUID(campaign_id)
    )
    assert again == resumed_at
