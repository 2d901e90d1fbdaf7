"""Deleting lists and campaigns: what is removed, and what keeps them."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.api.deletion_rules import why_campaign_is_kept, why_list_is_kept
from services.api.tests.support import Api

PROBLEM = "application/problem+json"


async def _new_list(api: Api) -> str:
    answer = await api.client.post("/api/v1/lists", json={"name": "d"}, headers=api.auth("editor"))
    return str(answer.json()["id"])


async def _new_campaign(api: Api, list_id: str) -> dict[str, Any]:
    body = {
        "name": "d",
        "subject": "s",
        "html": "<p>h</p>",
        "from_email": "news@example.com",
        "list_id": list_id,
    }
    answer = await api.client.post("/api/v1/campaigns", json=body, headers=api.auth("editor"))
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def _delete(api: Api, path: str) -> Any:
    return await api.client.delete(path, headers=api.auth("editor"))


def test_rules() -> None:
    assert why_list_is_kept({}, 0) is None
    assert "scheduled or sending" in str(why_list_is_kept({"paused": 1, "draft": 2}, 0))
    assert "import" in str(why_list_is_kept({}, 1))
    assert "unsubscribe" in str(why_list_is_kept({"completed": 1}, 0))
    assert "draft" in str(why_list_is_kept({"draft": 3}, 0))
    assert why_campaign_is_kept("draft") is None
    assert "unschedule" in str(why_campaign_is_kept("scheduled"))
    assert "only drafts" in str(why_campaign_is_kept("completed"))


async def test_delete_list_removes_recipients_and_uploads(api: Api, pool: asyncpg.Pool) -> None:
    list_id = await _new_list(api)
    await api.client.post(
        f"/api/v1/lists/{list_id}/recipients",
        json={"email": "a@example.com"},
        headers=api.auth("editor"),
    )
    upload = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("p.csv", b"email\nb@example.com\n", "text/csv")},
        headers=api.auth("editor"),
    )
    assert upload.status_code == 202, upload.text
    import_id = uuid.UUID(upload.json()["id"])

    running = await _delete(api, f"/api/v1/lists/{list_id}")
    assert running.status_code == 409 and "import" in running.json()["detail"]

    await pool.execute(  # the importer finishing the job
        "INSERT INTO import_jobs (id, list_id, status) VALUES ($1, $2, 'completed')"
        " ON CONFLICT (id) DO UPDATE SET status = 'completed'",
        import_id,
        uuid.UUID(list_id),
    )
    blob_id = await pool.fetchval("SELECT blob_id FROM import_requests WHERE id = $1", import_id)
    deleted = await _delete(api, f"/api/v1/lists/{list_id}")
    assert deleted.status_code == 204, deleted.text
    gone = await api.client.get(f"/api/v1/lists/{list_id}", headers=api.auth("viewer"))
    assert gone.status_code == 404
    lid = uuid.UUID(list_id)
    assert await pool.fetchval("SELECT count(*) FROM recipients WHERE list_id = $1", lid) == 0
    assert await pool.fetchval("SELECT count(*) FROM blobs WHERE id = $1", blob_id) == 0
    again = await _delete(api, f"/api/v1/lists/{list_id}")
    assert again.status_code == 404 and again.headers["content-type"] == PROBLEM


async def test_list_with_scheduled_campaign_is_kept(api: Api) -> None:
    list_id = await _new_list(api)
    campaign = await _new_campaign(api, list_id)
    scheduled = await api.client.post(
        f"/api/v1/campaigns/{campaign['id']}/schedule",
        json={"send_at": "2031-01-01T09:00", "timezone": "Asia/Kolkata"},
        headers=api.auth("editor"),
    )
    assert scheduled.status_code == 200, scheduled.text
    refused = await _delete(api, f"/api/v1/lists/{list_id}")
    assert refused.status_code == 409
    assert refused.headers["content-type"] == PROBLEM
    assert "scheduled or sending" in refused.json()["detail"]

    # A scheduled campaign cannot be deleted either; unscheduled, it can, then the list too.
    kept = await _delete(api, f"/api/v1/campaigns/{campaign['id']}")
    assert kept.status_code == 409 and "unschedule" in kept.json()["detail"]
    await api.client.post(
        f"/api/v1/campaigns/{campaign['id']}/unschedule", headers=api.auth("editor")
    )
    assert (await _delete(api, f"/api/v1/campaigns/{campaign['id']}")).status_code == 204
    assert (await _delete(api, f"/api/v1/lists/{list_id}")).status_code == 204


async def test_list_sent_to_is_kept_for_unsubscribe_links(api: Api, pool: asyncpg.Pool) -> None:
    list_id = await _new_list(api)
    campaign = await _new_campaign(api, list_id)
    await pool.execute(
        "UPDATE campaigns SET status = 'completed' WHERE id = $1", uuid.UUID(campaign["id"])
    )
    refused = await _delete(api, f"/api/v1/lists/{list_id}")
    assert refused.status_code == 409 and "unsubscribe" in refused.json()["detail"]
    started = await _delete(api, f"/api/v1/campaigns/{campaign['id']}")
    assert started.status_code == 409 and "completed" in started.json()["detail"]


async def test_list_with_draft_is_kept_until_the_draft_goes(api: Api) -> None:
    list_id = await _new_list(api)
    campaign = await _new_campaign(api, list_id)
    refused = await _delete(api, f"/api/v1/lists/{list_id}")
    assert refused.status_code == 409 and "draft" in refused.json()["detail"]
    assert (await _delete(api, f"/api/v1/campaigns/{campaign['id']}")).status_code == 204
    gone = await api.client.get(f"/api/v1/campaigns/{campaign['id']}", headers=api.auth("viewer"))
    assert gone.status_code == 404
    assert (await _delete(api, f"/api/v1/lists/{list_id}")).status_code == 204


async def test_unknown_campaign_is_404(api: Api) -> None:
    answer = await _delete(api, f"/api/v1/campaigns/{uuid.uuid4()}")
    assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM


async def test_delete_list_while_an_import_holds_it_answers_409_at_once(
    api: Api, pool: asyncpg.Pool
) -> None:
    list_id = await _new_list(api)
    # What the importer holds while it loads: the list row FOR KEY SHARE, until it commits.
    async with pool.acquire() as importer, importer.transaction():
        await importer.execute(
            "SELECT 1 FROM lists WHERE id = $1 FOR KEY SHARE", uuid.UUID(list_id)
        )
        busy = await _delete(api, f"/api/v1/lists/{list_id}")
        assert busy.status_code == 409, busy.text
        assert "import" in busy.json()["detail"]
    deleted = await _delete(api, f"/api/v1/lists/{list_id}")
    assert deleted.status_code == 204, deleted.text
