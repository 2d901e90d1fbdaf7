"""Pause, resume and cancel through the API: allowed transitions, 409 for the others,
roles, and the `campaign.control` event every dispatcher acts on."""

from __future__ import annotations

import uuid

import asyncpg

from services.api.tests.support import Api, find_event
from services.api.tests.test_campaigns import _new_campaign

PROBLEM = "application/problem+json"


async def _in_progress(api: Api, pool: asyncpg.Pool) -> str:
    campaign = await _new_campaign(api)
    # The scheduler's claim, done by hand: this test is about the API's side.
    await pool.execute(
        "UPDATE campaigns SET status = 'in_progress', started_at = now() WHERE id = $1",
        uuid.UUID(campaign["id"]),
    )
    return str(campaign["id"])


async def _post(api: Api, campaign_id: str, action: str, role: str = "editor") -> tuple[int, dict]:
    answer = await api.client.post(
        f"/api/v1/campaigns/{campaign_id}/{action}", headers=api.auth(role)
    )
    return answer.status_code, answer.json()


async def test_pause_resume_cancel_walk_the_allowed_transitions(
    api: Api, pool: asyncpg.Pool
) -> None:
    campaign_id = await _in_progress(api, pool)
    assert (await _post(api, campaign_id, "pause"))[1]["status"] == "paused"
    assert (await _post(api, campaign_id, "pause"))[1]["status"] == "paused"  # idempotent
    assert (await _post(api, campaign_id, "resume"))[1]["status"] == "in_progress"
    status, body = await _post(api, campaign_id, "cancel")
    assert status == 200 and body["status"] == "cancelled" and body["finished_at"]
    _, event = await find_event(
        api.settings,
        "campaign.control",
        lambda v: v.get("campaign_id") == campaign_id and v.get("action") == "cancel",
    )
    assert event["schema_version"] == 1


async def test_refused_transitions_are_409_problems(api: Api, pool: asyncpg.Pool) -> None:
    draft = await _new_campaign(api)
    status, body = await _post(api, draft["id"], "pause")
    assert status == 409 and "cannot pause a campaign that is draft" in body["detail"]
    status, body = await _post(api, draft["id"], "resume")
    assert status == 409 and body["title"] and "draft" in body["detail"]
    campaign_id = await _in_progress(api, pool)
    await _post(api, campaign_id, "cancel")
    status, _ = await _post(api, campaign_id, "resume")
    assert status == 409


async def test_viewer_may_not_and_unknown_campaign_is_404(api: Api, pool: asyncpg.Pool) -> None:
    campaign_id = await _in_progress(api, pool)
    status, body = await _post(api, campaign_id, "pause", role="viewer")
    assert status == 403
    status, _ = await _post(api, str(uuid.uuid4()), "cancel")
    assert status == 404


async def test_a_pause_by_a_provider_outage_shows_its_reason_until_resumed(
    api: Api, pool: asyncpg.Pool
) -> None:
    campaign_id = await _in_progress(api, pool)
    # What the scheduler writes when a dispatcher asks for a pause (origin `provider`).
    await pool.execute(
        "UPDATE campaigns SET status = 'paused', paused_by = 'provider',"
        " pause_reason = 'provider refused the account: 401: invalid key' WHERE id = $1",
        uuid.UUID(campaign_id),
    )
    answer = await api.client.get(f"/api/v1/campaigns/{campaign_id}", headers=api.auth("viewer"))
    shown = answer.json()
    assert shown["status"] == "paused" and shown["paused_by"] == "provider"
    assert shown["pause_reason"] == "provider refused the account: 401: invalid key"
    _, again = await _post(api, campaign_id, "pause")  # an admin's repeat keeps the reason
    assert again["paused_by"] == "provider" and again["pause_reason"] == shown["pause_reason"]
    _, resumed = await _post(api, campaign_id, "resume")
    assert resumed["status"] == "in_progress" and resumed["pause_reason"] is None
    _, paused = await _post(api, campaign_id, "pause")
    assert paused["paused_by"] == "admin" and paused["pause_reason"] is None


async def test_a_campaign_from_before_audiences_can_be_paused_and_resumed(
    api: Api, pool: asyncpg.Pool
) -> None:
    """A campaign written with only `list_id` (an install older than migration 0026, or an
    internal writer) has no `audience`: control answers must still show its one list."""
    campaign_id = await _in_progress(api, pool)
    await pool.execute("UPDATE campaigns SET audience = NULL WHERE id = $1", uuid.UUID(campaign_id))
    for action, status in (("pause", "paused"), ("resume", "in_progress"), ("cancel", "cancelled")):
        code, body = await _post(api, campaign_id, action)
        assert (code, body["status"]) == (200, status), body
        assert body["audience"]["lists"] == [body["list_id"]]


async def test_a_stored_audience_missing_keys_reads_as_empty_ones(
    api: Api, pool: asyncpg.Pool
) -> None:
    """A definition written by another writer with only some keys: the listing and the
    campaign still answer (they answered 500 for every campaign in the listing)."""
    campaign_id = await _in_progress(api, pool)
    await pool.execute(
        "UPDATE campaigns SET audience = jsonb_build_object('lists', jsonb_build_array(list_id))"
        " WHERE id = $1",
        uuid.UUID(campaign_id),
    )
    one = await api.client.get(f"/api/v1/campaigns/{campaign_id}", headers=api.auth("viewer"))
    assert one.status_code == 200, one.text
    assert one.json()["audience"]["exclude_segments"] == []
    listing = await api.client.get("/api/v1/campaigns?limit=200", headers=api.auth("viewer"))
    assert listing.status_code == 200, listing.text
