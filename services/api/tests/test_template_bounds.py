"""Issue 11: the API refuses a template too costly to render (item 7) and a line break in
any value that becomes a mail header (item 3), with a 422 naming the field."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from services.api.tests.support import Api

PROBLEM = "application/problem+json"
RUNAWAY = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE = "{{ 'x' * 10**9 }}"

pytestmark = pytest.mark.timeout(120)  # the previous code rendered RUNAWAY for hours


async def _list(api: Api) -> str:
    answer = await api.client.post("/api/v1/lists", json={"name": "b"}, headers=api.auth("editor"))
    return str(answer.json()["id"])


def _campaign(list_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "Bounds",
        "subject": "Hello {{ first_name }}",
        "html": "<p>Hi {{ first_name }}</p>",
        "from_email": "news@example.com",
        "from_name": "News",
        "list_id": list_id,
    } | overrides


def _template(**overrides: Any) -> dict[str, Any]:
    return {"name": "T", "subject": "News", "html": "<p>Hi</p>"} | overrides


def _assert_problem(answer: Any, field: str, *, kind: str, says: str) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["type"].endswith(f"/{kind}"), problem
    assert says in problem["detail"], problem
    assert [e["field"] for e in problem["errors"]] == [field], problem


@pytest.mark.parametrize(
    ("part", "source", "says"),
    [
        ("html", RUNAWAY, "MAILFLEET_RENDER_TIMEOUT_MS"),
        ("text", HUGE, "MAILFLEET_RENDER_MAX_BYTES"),
        ("subject", "{% for i in range(10**9) %}{% endfor %}", "range()"),
    ],
)
async def test_create_and_edit_refuse_a_template_too_costly_to_render(
    api: Api, part: str, source: str, says: str
) -> None:
    list_id = await _list(api)
    editor = api.auth("editor")
    created = await api.client.post(
        "/api/v1/campaigns", json=_campaign(list_id, **{part: source}), headers=editor
    )
    _assert_problem(created, f"body.{part}", kind="template-too-costly", says=says)
    ok = await api.client.post("/api/v1/campaigns", json=_campaign(list_id), headers=editor)
    edited = await api.client.patch(
        f"/api/v1/campaigns/{ok.json()['id']}", json={part: source}, headers=editor
    )
    _assert_problem(edited, f"body.{part}", kind="template-too-costly", says=says)
    template = await api.client.post(
        "/api/v1/templates", json=_template(**{part: source}), headers=editor
    )
    _assert_problem(template, f"body.{part}", kind="template-too-costly", says=says)


async def test_preview_and_schedule_refuse_a_stored_template_too_costly_to_render(
    api: Api, pool: asyncpg.Pool
) -> None:
    list_id = await _list(api)
    answer = await api.client.post(
        "/api/v1/campaigns", json=_campaign(list_id), headers=api.auth("editor")
    )
    campaign = answer.json()["id"]
    # Content stored before the API refused it (or by a direct database edit).
    await pool.execute("UPDATE campaigns SET html = $2 WHERE id = $1", uuid.UUID(campaign), RUNAWAY)
    preview = await api.client.get(
        f"/api/v1/campaigns/{campaign}/preview", headers=api.auth("viewer")
    )
    assert preview.status_code == 422, preview.text
    assert preview.json()["type"].endswith("/template-too-costly")
    assert "MAILFLEET_RENDER_TIMEOUT_MS" in preview.json()["detail"]
    scheduled = await api.client.post(
        f"/api/v1/campaigns/{campaign}/schedule", json={}, headers=api.auth("editor")
    )
    _assert_problem(
        scheduled, "campaign.html", kind="template-too-costly", says="MAILFLEET_RENDER_TIMEOUT_MS"
    )
    after = await api.client.get(f"/api/v1/campaigns/{campaign}", headers=api.auth("viewer"))
    assert after.json()["status"] == "draft"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hello\r\nBcc: everyone@example.com"),
        ("subject", "Hello\nX-Priority: 1"),
        ("from_name", "News\rBcc: everyone@example.com"),
    ],
)
async def test_a_line_break_in_a_header_value_is_refused(api: Api, field: str, value: str) -> None:
    list_id = await _list(api)
    editor = api.auth("editor")
    created = await api.client.post(
        "/api/v1/campaigns", json=_campaign(list_id, **{field: value}), headers=editor
    )
    _assert_problem(created, f"body.{field}", kind="validation", says="line break")
    ok = await api.client.post("/api/v1/campaigns", json=_campaign(list_id), headers=editor)
    edited = await api.client.patch(
        f"/api/v1/campaigns/{ok.json()['id']}", json={field: value}, headers=editor
    )
    _assert_problem(edited, f"body.{field}", kind="validation", says="line break")
    if field == "subject":
        template = await api.client.post(
            "/api/v1/templates", json=_template(subject=value), headers=editor
        )
        _assert_problem(template, "body.subject", kind="validation", says="line break")
        made = await api.client.post("/api/v1/templates", json=_template(), headers=editor)
        template_edit = await api.client.patch(
            f"/api/v1/templates/{made.json()['id']}", json={"subject": value}, headers=editor
        )
        _assert_problem(template_edit, "body.subject", kind="validation", says="line break")
