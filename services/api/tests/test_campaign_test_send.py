"""`POST /campaigns/{id}/test`: rendered mail to a few addresses through the sink provider."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from libs.common.settings import Settings
from libs.mail.sink import SinkHandle, start_sink
from services.api.app import create_app
from services.api.tests.support import running

PROBLEM = "application/problem+json"


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


@pytest.fixture
async def client(api_settings: Settings, sink: SinkHandle) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_settings.model_copy(update={"sink_url": sink.url}))
    async with running(app) as http:
        yield http


def _admin(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.bootstrap_api_key}"}


async def _campaign(client: httpx.AsyncClient, settings: Settings, **overrides: Any) -> Any:
    auth = _admin(settings)
    list_id = (await client.post("/api/v1/lists", json={"name": "t"}, headers=auth)).json()["id"]
    body = {
        "name": "Test send",
        "subject": "Hello {{ first_name }}",
        "html": "<p>Hi {{ first_name }}, this is for {{ email }}</p>",
        "text": "Hi {{ first_name }}",
        "from_email": "news@example.com",
        "list_id": list_id,
        "provider": "sink",
    } | overrides
    answer = await client.post("/api/v1/campaigns", json=body, headers=auth)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def _add_member(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    campaign: Any,
    email: str,
    fields: dict[str, str],
) -> None:
    member = await client.post(
        f"/api/v1/lists/{campaign['list_id']}/recipients",
        json={"email": email, "fields": fields},
        headers=auth,
    )
    assert member.status_code == 201, member.text


async def test_sends_rendered_mail_to_member_and_stranger(
    client: httpx.AsyncClient, api_settings: Settings, sink: SinkHandle
) -> None:
    auth = _admin(api_settings)
    campaign = await _campaign(client, api_settings)
    await _add_member(client, auth, campaign, "ada@example.com", {"first_name": "Ada"})
    answer = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/test",
        json={"emails": ["Ada@Example.com", "bob@example.com", "bob@example.com "]},
        headers=auth,
    )
    assert answer.status_code == 200, answer.text
    results = {r["email"]: r for r in answer.json()["results"]}
    assert list(results) == ["ada@example.com", "bob@example.com"], "deduplicated, in order"
    assert results["ada@example.com"]["status"] == "sent"
    assert results["ada@example.com"]["list_member"] is True
    assert results["bob@example.com"]["list_member"] is False
    assert answer.json()["provider"] == "sink"

    mails = {m.email: m for m in sink.messages}
    assert mails["ada@example.com"].subject == "Hello Ada"
    assert mails["ada@example.com"].html == "<p>Hi Ada, this is for ada@example.com</p>"
    assert mails["bob@example.com"].subject == "Hello "
    # Kept apart from the real send: no campaign correlation, its own Message-ID.
    for mail in mails.values():
        assert "campaign_id" not in mail.custom_args
        assert mail.headers["Message-ID"].startswith("<mf.test.")
        assert "X-Mailfleet-Test" in mail.headers
    assert "List-Unsubscribe" in mails["ada@example.com"].headers
    assert "List-Unsubscribe" not in mails["bob@example.com"].headers
    # The campaign itself is unchanged.
    after = await client.get(f"/api/v1/campaigns/{campaign['id']}", headers=auth)
    assert after.json()["status"] == "draft"


async def test_suppressed_address_is_not_mailed(
    client: httpx.AsyncClient, api_settings: Settings, sink: SinkHandle, pool: asyncpg.Pool
) -> None:
    email = f"stop-{uuid.uuid4().hex[:8]}@example.com"
    await pool.execute(
        "INSERT INTO suppressions (email, reason, source) VALUES ($1, 'bounce', 'test')", email
    )
    campaign = await _campaign(client, api_settings)
    answer = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/test",
        json={"emails": [email, "ok@example.com"]},
        headers=_admin(api_settings),
    )
    results = {r["email"]: r for r in answer.json()["results"]}
    assert results[email]["status"] == "suppressed" and "bounce" in results[email]["error"]
    assert results["ok@example.com"]["status"] == "sent"
    assert email not in {m.email for m in sink.messages}


async def test_provider_refusal_is_a_failed_outcome(
    client: httpx.AsyncClient, api_settings: Settings, sink: SinkHandle
) -> None:
    campaign = await _campaign(client, api_settings)
    sink.inject_fault(400, count=1)
    answer = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/test",
        json={"emails": ["a@example.com"]},
        headers=_admin(api_settings),
    )
    assert answer.status_code == 200
    [result] = answer.json()["results"]
    assert result["status"] == "failed" and "400" in result["error"]


async def test_a_refused_api_key_is_reported_not_a_server_error(
    client: httpx.AsyncClient, api_settings: Settings, sink: SinkHandle
) -> None:
    campaign = await _campaign(client, api_settings)
    sink.inject_fault(401, count=10)
    try:
        answer = await client.post(
            f"/api/v1/campaigns/{campaign['id']}/test",
            json={"emails": ["a@example.com", "b@example.com"]},
            headers=_admin(api_settings),
        )
    finally:
        sink.state.faults.clear()
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["failed", "failed"]
    assert all(r["error"].startswith("provider refused the account: 401") for r in results)


async def test_runtime_template_error_fails_that_address(
    client: httpx.AsyncClient, api_settings: Settings
) -> None:
    campaign = await _campaign(client, api_settings, html="<p>{{ 1 / count }}</p>")
    answer = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/test",
        json={"emails": ["a@example.com"]},
        headers=_admin(api_settings),
    )
    [result] = answer.json()["results"]
    assert result["status"] == "failed" and result["error"].startswith("template error")


async def test_validation(client: httpx.AsyncClient, api_settings: Settings) -> None:
    campaign = await _campaign(client, api_settings)
    path = f"/api/v1/campaigns/{campaign['id']}/test"
    auth = _admin(api_settings)
    too_many = await client.post(
        path, json={"emails": [f"u{i}@example.com" for i in range(11)]}, headers=auth
    )
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["field"] == "body.emails"
    empty = await client.post(path, json={"emails": []}, headers=auth)
    assert empty.status_code == 422
    bad = await client.post(path, json={"emails": ["ok@example.com", "nope"]}, headers=auth)
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM
    assert bad.json()["errors"] == [{"field": "body.emails.1", "message": "invalid email address"}]
    missing = await client.post(
        f"/api/v1/campaigns/{uuid.uuid4()}/test", json={"emails": ["a@example.com"]}, headers=auth
    )
    assert missing.status_code == 404


# ----- issue 11: costly templates and header injection -----

_RUNAWAY = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.mark.timeout(60)  # the previous code rendered this for hours
async def test_a_template_too_costly_to_render_is_refused_with_a_422(
    client: httpx.AsyncClient, api_settings: Settings, sink: SinkHandle, pool: asyncpg.Pool
) -> None:
    campaign = await _campaign(client, api_settings)
    # Stored before the API refused such templates at create.
    await pool.execute(
        "UPDATE campaigns SET html = $2 WHERE id = $1", uuid.UUID(campaign["id"]), _RUNAWAY
    )
    answer = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/test",
        json={"emails": ["a@example.com"]},
        headers=_admin(api_settings),
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["type"].endswith("/template-too-costly")
    assert "MAILFLEET_RENDER_TIMEOUT_MS" in problem["detail"]
    assert problem["errors"][0]["field"] == "campaign.html"
    assert sink.messages == []


async def test_a_line_break_from_a_merge_field_fails_that_address_alone(
    client: httpx.AsyncClient, api_settings: Settings, sink: SinkHandle
) -> None:
    auth = _admin(api_settings)
    campaign = await _campaign(client, api_settings)
    fields = {"first_name": "Eve\r\nBcc: all@example.com"}
    await _add_member(client, auth, campaign, "eve@example.com", fields)
    answer = await client.post(
        f"/api/v1/campaigns/{campaign['id']}/test",
        json={"emails": ["eve@example.com", "bob@example.com"]},
        headers=auth,
    )
    assert answer.status_code == 200, answer.text
    results = {r["email"]: r for r in answer.json()["results"]}
    assert results["eve@example.com"]["status"] == "failed"
    assert "line break" in results["eve@example.com"]["error"]
    assert results["bob@example.com"]["status"] == "sent"
    assert [m.email for m in sink.messages] == ["bob@example.com"]
