"""A/B tests in the API (issue 17 item 1): set, read, override, delete, and the winner by
hand before the wait is over (once, audited), with 422s naming the field of bad input and
409s for the wrong campaign state; the stats per variant come from the tracker's counters."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.api import ab_repo
from services.api.tests.support import Api
from services.scheduler.repository import ScheduleRepository

PROBLEM = "application/problem+json"
TEST = {
    "variants": [{"subject": "A {{ first_name }}"}, {"subject": "B"}, {"from_name": "C team"}],
    "test_share": 0.3,
    "wait_seconds": 3600,
    "metric": "open",
    "seed": 99,
}


async def _campaign(api: Api, recipients: int = 0) -> str:
    auth = api.auth("editor")
    list_id = (await api.client.post("/api/v1/lists", json={"name": "ab"}, headers=auth)).json()[
        "id"
    ]
    for i in range(recipients):
        added = await api.client.post(
            f"/api/v1/lists/{list_id}/recipients",
            json={"email": f"ab{i}-{uuid.uuid4().hex[:6]}@example.com"},
            headers=auth,
        )
        assert added.status_code == 201, added.text
    body = {
        "name": "ab",
        "subject": "Base",
        "html": "<p>Hi</p>",
        "from_email": "news@example.com",
        "list_id": list_id,
    }
    answer = await api.client.post("/api/v1/campaigns", json=body, headers=auth)
    assert answer.status_code == 201, answer.text
    campaign_id: str = answer.json()["id"]
    return campaign_id


async def _put(api: Api, campaign_id: str, body: dict[str, Any], role: str = "editor") -> Any:
    return await api.client.put(
        f"/api/v1/campaigns/{campaign_id}/ab", json=body, headers=api.auth(role)
    )


async def test_bad_tests_are_refused_naming_the_field(api: Api) -> None:
    campaign_id = await _campaign(api)
    cases = [
        ({**TEST, "variants": [{"subject": "only one"}]}, "body.variants"),
        ({**TEST, "variants": [{"subject": str(i)} for i in range(6)]}, "body.variants"),
        ({**TEST, "test_share": 0}, "body.test_share"),
        ({**TEST, "test_share": 1.5}, "body.test_share"),
        ({**TEST, "metric": "revenue"}, "body.metric"),
        ({**TEST, "wait_seconds": -1}, "body.wait_seconds"),
        ({**TEST, "variants": [{"subject": "x"}, {}]}, "body.variants.1"),
        ({**TEST, "variants": [{"subject": "x"}, {"subject": "a\r\nBcc: x@y.z"}]}, "body.variants.1.subject"),
        ({**TEST, "variants": [{"subject": "x"}, {"subject": "{{ oops"}]}, "body.variants.1.subject"),
        ({**TEST, "variants": [{"subject": "x"}, {"colour": "red"}]}, "body.variants.1.colour"),
    ]  # fmt: skip
    for body, field in cases:
        refused = await _put(api, campaign_id, body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["errors"][0]["field"] == field, (body, refused.json())
    assert (await _put(api, campaign_id, TEST, role="viewer")).status_code == 403
    assert (await _put(api, str(uuid.uuid4()), TEST)).status_code == 404
    missing = await api.client.get(
        f"/api/v1/campaigns/{campaign_id}/ab", headers=api.auth("viewer")
    )
    assert missing.status_code == 404  # nothing was stored


async def test_set_read_override_and_pick_the_winner_by_hand(api: Api, pool: asyncpg.Pool) -> None:
    campaign_id = await _campaign(api, recipients=20)
    path = f"/api/v1/campaigns/{campaign_id}/ab"
    first = await _put(api, campaign_id, {**TEST, "seed": None})
    assert first.status_code == 200, first.text
    assert isinstance(first.json()["seed"], int)  # a random seed, stored
    answer = await _put(api, campaign_id, TEST)  # replaced while a draft
    assert answer.status_code == 200, answer.text
    test = answer.json()
    assert [v["variant"] for v in test["variants"]] == ["A", "B", "C"]
    assert test["variants"][2] == {
        "variant": "C", "subject": None, "from_name": "C team", "html": None, "text": None,
    }  # fmt: skip
    assert (test["seed"], test["test_share"], test["winner"], test["decide_after"]) == (
        99, 0.3, None, None,
    )  # fmt: skip
    assert [v["variant"] for v in test["stats"]["variants"]] == ["A", "B", "C"]

    early = await api.client.post(
        f"{path}/winner", json={"variant": "B"}, headers=api.auth("editor")
    )
    assert early.status_code == 409  # the test has not started
    scheduled = await api.client.post(
        f"/api/v1/campaigns/{campaign_id}/schedule", json={}, headers=api.auth("editor")
    )
    assert scheduled.status_code == 200, scheduled.text
    assert (await _put(api, campaign_id, TEST)).status_code == 200  # still editable
    started = datetime.now(UTC)
    plan = await ScheduleRepository(pool).claim_and_plan(uuid.UUID(campaign_id), 100, now=started)
    assert plan is not None
    refused = await _put(api, campaign_id, TEST)
    assert refused.status_code == 409  # sending: the test is fixed
    gone = await api.client.delete(path, headers=api.auth("editor"))
    assert gone.status_code == 409

    # The wait and the metric can be overridden until the winner is known.
    patched = await api.client.patch(path, json={"wait_seconds": 60}, headers=api.auth("editor"))
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["wait_seconds"] == 60 and body["metric"] == "open"
    decide_after = datetime.fromisoformat(body["decide_after"])
    assert (decide_after - datetime.fromisoformat(body["test_started_at"])).total_seconds() == 60
    sizes = await pool.fetch(
        "SELECT variant, sum(cardinality(recipient_ids)) AS n FROM batch_plans"
        " WHERE campaign_id = $1 GROUP BY variant",
        uuid.UUID(campaign_id),
    )
    assert {r["variant"]: r["n"] for r in sizes} == {"A": 2, "B": 2, "C": 2, None: 14}

    wrong = await api.client.post(
        f"{path}/winner", json={"variant": "D"}, headers=api.auth("editor")
    )
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "body.variant"
    viewer = await api.client.post(
        f"{path}/winner", json={"variant": "B"}, headers=api.auth("viewer")
    )
    assert viewer.status_code == 403
    chosen = await api.client.post(
        f"{path}/winner", json={"variant": "B"}, headers=api.auth("editor")
    )
    assert chosen.status_code == 200, chosen.text
    decided = chosen.json()
    assert decided["winner"] == "B" and decided["decided_by"].startswith("api_key:")
    assert decided["decision_reason"] == "chosen by hand"
    again = await api.client.post(
        f"{path}/winner", json={"variant": "C"}, headers=api.auth("admin")
    )
    assert again.status_code == 409 and "decided already: B" in again.json()["detail"]
    late = await api.client.patch(path, json={"metric": "click"}, headers=api.auth("editor"))
    assert late.status_code == 409
    actions = await pool.fetch(
        "SELECT action, details FROM audit_log WHERE target_id = $1 ORDER BY created_at",
        campaign_id,
    )
    assert [a["action"] for a in actions] == [
        "campaign.ab_set",
        "campaign.ab_set",
        "campaign.schedule",
        "campaign.ab_set",
        "campaign.ab_update",
        "campaign.ab_winner",
    ]
    await pool.execute(
        "UPDATE campaigns SET status = 'completed' WHERE id = $1", uuid.UUID(campaign_id)
    )


async def test_stats_per_variant_show_the_z_test(api: Api, pool: asyncpg.Pool) -> None:
    campaign_id = await _campaign(api)
    assert (
        await _put(api, campaign_id, {**TEST, "variants": TEST["variants"][:2]})
    ).status_code == 200
    cid = uuid.UUID(campaign_id)
    # The tracker's counters, as it folds them (its tests prove the folds).
    await pool.executemany(
        "INSERT INTO campaign_variant_stats (campaign_id, variant, recipients, sent,"
        " unique_opens, opens, unique_clicks) VALUES ($1, $2, $3, $3, $4, $4, $5)",
        [(cid, "A", 1000, 150, 30), (cid, "B", 1000, 200, 30)],
    )
    stats = (
        await api.client.get(f"/api/v1/campaigns/{campaign_id}/ab", headers=api.auth("viewer"))
    ).json()["stats"]
    assert stats["leaders"] == {"open": "B", "click": "A"}
    a, b = stats["variants"]
    assert (a["unique_open_rate"], b["unique_open_rate"]) == (0.15, 0.2)
    assert b["against_leader"]["open"] is None  # the leader itself
    versus = a["against_leader"]["open"]
    assert versus["leader"] == "B" and versus["verdict"] == "significant"
    assert versus["p_value"] == 0.003256 and versus["difference"] == -0.05
    assert (versus["ci_low"], versus["ci_high"]) == (-0.083233, -0.016767)
    tie = b["against_leader"]["click"]
    assert tie["p_value"] == 1.0 and tie["verdict"] == "not significant"
    await api.client.delete(f"/api/v1/campaigns/{campaign_id}/ab", headers=api.auth("editor"))
    assert (
        await pool.fetchval("SELECT count(*) FROM ab_variants WHERE campaign_id = $1", cid)
    ) == 0


async def test_a_duplicate_keeps_the_test_with_a_new_seed_and_no_decision(
    api: Api, pool: asyncpg.Pool
) -> None:
    campaign_id = await _campaign(api)
    assert (await _put(api, campaign_id, TEST)).status_code == 200
    await pool.execute(
        "UPDATE ab_tests SET winner = 'B', decided_by = 'x' WHERE campaign_id = $1",
        uuid.UUID(campaign_id),
    )
    copy = await api.client.post(
        f"/api/v1/campaigns/{campaign_id}/duplicate", headers=api.auth("editor")
    )
    assert copy.status_code == 201, copy.text
    test = (
        await api.client.get(
            f"/api/v1/campaigns/{copy.json()['id']}/ab", headers=api.auth("viewer")
        )
    ).json()
    assert [v["subject"] for v in test["variants"]] == ["A {{ first_name }}", "B", None]
    assert (test["test_share"], test["wait_seconds"], test["metric"]) == (0.3, 3600, "open")
    assert test["winner"] is None and test["test_started_at"] is None
    assert test["seed"] != 99
    plain = await _campaign(api)
    copied = await api.client.post(
        f"/api/v1/campaigns/{plain}/duplicate", headers=api.auth("editor")
    )
    assert copied.status_code == 201
    missing = await api.client.get(
        f"/api/v1/campaigns/{copied.json()['id']}/ab", headers=api.auth("viewer")
    )
    assert missing.status_code == 404


async def test_a_test_set_while_the_scheduler_claims_is_planned_with_it(
    api: Api, pool: asyncpg.Pool
) -> None:
    """The API's write touches the campaign row: a claim that started before it committed
    fails its repeatable-read compare-and-set (and is tried again by the next tick) instead
    of planning a plain campaign from a snapshot without the test."""
    campaign_id = await _campaign(api, recipients=10)
    cid = uuid.UUID(campaign_id)
    scheduled = await api.client.post(
        f"/api/v1/campaigns/{campaign_id}/schedule", json={}, headers=api.auth("editor")
    )
    assert scheduled.status_code == 200
    repo = ScheduleRepository(pool)
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        writing = conn.transaction()
        await writing.start()
        assert await ab_repo.lock_campaign(conn, cid) is not None
        settings = {"test_share": 0.5, "seed": 3, "wait_seconds": 60, "metric": "open"}
        await ab_repo.replace_test(
            conn, cid, settings, [("A", {"subject": "a"}), ("B", {"subject": "b"})]
        )
        claim = asyncio.create_task(repo.claim_and_plan(cid, 100, now=now))

        async def claim_waits() -> bool:
            waiting = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%SET status = ''in_progress''%'"
            )
            return bool(waiting)

        deadline = asyncio.get_running_loop().time() + 10
        while not await claim_waits():
            assert asyncio.get_running_loop().time() < deadline, "the claim never waited"
            await asyncio.sleep(0.01)  # polling another session's state
        await writing.commit()
    assert await claim is None  # refused, not planned without the test
    assert await repo.claim_and_plan(cid, 100, now=now) is not None
    sizes = await pool.fetch(
        "SELECT variant, sum(cardinality(recipient_ids)) AS n FROM batch_plans"
        " WHERE campaign_id = $1 GROUP BY variant",
        cid,
    )
    assert {r["variant"]: r["n"] for r in sizes} == {"A": 3, "B": 2, None: 5}
    await pool.execute("UPDATE campaigns SET status = 'completed' WHERE id = $1", cid)
