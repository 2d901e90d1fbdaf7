"""Templates: versioned content, pagination, validation, and campaigns made from them."""

from __future__ import annotations

import uuid
from typing import Any

from services.api.tests.support import Api

PROBLEM = "application/problem+json"


def _template(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Newsletter",
        "description": "monthly",
        "subject": "News for {{ first_name }}",
        "html": "<p>Hi {{ first_name }}</p>",
        "text": "Hi {{ first_name }}",
    }
    return body | overrides


async def _new_template(api: Api, **overrides: Any) -> dict[str, Any]:
    answer = await api.client.post(
        "/api/v1/templates", json=_template(**overrides), headers=api.auth("editor")
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def _new_list(api: Api) -> str:
    answer = await api.client.post("/api/v1/lists", json={"name": "t"}, headers=api.auth("editor"))
    return str(answer.json()["id"])


async def test_create_and_read_version_one(api: Api) -> None:
    created = await _new_template(api)
    assert created["version"] == 1 and created["latest_version"] == 1
    assert created["subject"] == "News for {{ first_name }}"
    read = await api.client.get(f"/api/v1/templates/{created['id']}", headers=api.auth("viewer"))
    assert read.status_code == 200
    assert read.json()["html"] == "<p>Hi {{ first_name }}</p>"


async def test_content_edit_adds_version_and_rename_does_not(api: Api) -> None:
    template = await _new_template(api)
    path = f"/api/v1/templates/{template['id']}"
    renamed = await api.client.patch(path, json={"name": "Renamed"}, headers=api.auth("editor"))
    assert renamed.json()["latest_version"] == 1 and renamed.json()["name"] == "Renamed"
    same = await api.client.patch(
        path, json={"subject": template["subject"]}, headers=api.auth("editor")
    )
    assert same.json()["latest_version"] == 1, "unchanged content makes no version"

    edited = await api.client.patch(
        path, json={"subject": "Version two", "text": None}, headers=api.auth("editor")
    )
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert body["latest_version"] == 2 and body["version"] == 2
    assert body["subject"] == "Version two"
    assert body["html"] == template["html"], "parts not given are carried over"
    assert body["text"] is None

    old = await api.client.get(f"{path}?version=1", headers=api.auth("viewer"))
    assert old.json()["subject"] == template["subject"] and old.json()["text"] is not None
    one = await api.client.get(f"{path}/versions/1", headers=api.auth("viewer"))
    assert one.status_code == 200 and one.json()["version"] == 1
    missing = await api.client.get(f"{path}/versions/9", headers=api.auth("viewer"))
    assert missing.status_code == 404 and "no version 9" in missing.json()["detail"]


async def test_versions_paginate_newest_first(api: Api) -> None:
    template = await _new_template(api)
    path = f"/api/v1/templates/{template['id']}"
    for n in range(2, 6):
        await api.client.patch(path, json={"html": f"<p>v{n}</p>"}, headers=api.auth("editor"))
    seen: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await api.client.get(f"{path}/versions", params=params, headers=api.auth("viewer"))
        assert page.status_code == 200, page.text
        seen += [v["version"] for v in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    bad = await api.client.get(
        f"{path}/versions", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=api.auth("viewer")
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"


async def test_list_templates_paginates(api: Api) -> None:
    ids = {(await _new_template(api, name=f"p{i}"))["id"] for i in range(3)}
    found: set[str] = set()
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await api.client.get("/api/v1/templates", params=params, headers=api.auth("viewer"))
        items = page.json()["items"]
        assert all("html" not in item for item in items), "the listing carries no content"
        found |= {item["id"] for item in items}
        cursor = page.json()["next_cursor"]
        if cursor is None or ids <= found:
            break
    assert ids <= found


async def test_syntax_error_names_part_and_line(api: Api) -> None:
    answer = await api.client.post(
        "/api/v1/templates",
        json=_template(html="<p>ok</p>\n{% if x %}never closed"),
        headers=api.auth("editor"),
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    error = answer.json()["errors"][0]
    assert error["field"] == "body.html" and error["line"] == 2
    template = await _new_template(api)
    patch = await api.client.patch(
        f"/api/v1/templates/{template['id']}",
        json={"subject": "{{ broken"},
        headers=api.auth("editor"),
    )
    assert patch.status_code == 422 and patch.json()["errors"][0]["field"] == "body.subject"
    null = await api.client.patch(
        f"/api/v1/templates/{template['id']}", json={"html": None}, headers=api.auth("editor")
    )
    assert null.status_code == 422 and null.json()["errors"][0]["field"] == "body.html"


async def test_campaign_copies_template_content(api: Api) -> None:
    template = await _new_template(api)
    list_id = await _new_list(api)
    campaign_body = {
        "name": "From template",
        "from_email": "news@example.com",
        "list_id": list_id,
        "template_id": template["id"],
    }
    created = await api.client.post(
        "/api/v1/campaigns", json=campaign_body, headers=api.auth("editor")
    )
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert campaign["subject"] == template["subject"] and campaign["html"] == template["html"]
    assert campaign["template_id"] == template["id"] and campaign["template_version"] == 1

    # A later template edit (or deletion) does not reach the campaign.
    await api.client.patch(
        f"/api/v1/templates/{template['id']}",
        json={"html": "<p>changed</p>"},
        headers=api.auth("editor"),
    )
    pinned = await api.client.post(
        "/api/v1/campaigns",
        json=campaign_body | {"template_version": 1},
        headers=api.auth("editor"),
    )
    assert pinned.json()["html"] == template["html"]
    latest = await api.client.post(
        "/api/v1/campaigns", json=campaign_body, headers=api.auth("editor")
    )
    assert latest.json()["html"] == "<p>changed</p>" and latest.json()["template_version"] == 2
    deleted = await api.client.delete(
        f"/api/v1/templates/{template['id']}", headers=api.auth("editor")
    )
    assert deleted.status_code == 204
    again = await api.client.get(f"/api/v1/campaigns/{campaign['id']}", headers=api.auth("viewer"))
    assert again.json()["html"] == template["html"]
    gone = await api.client.get(f"/api/v1/templates/{template['id']}", headers=api.auth("viewer"))
    assert gone.status_code == 404


async def test_campaign_template_validation(api: Api) -> None:
    template = await _new_template(api)
    list_id = await _new_list(api)
    base = {"name": "x", "from_email": "news@example.com", "list_id": list_id}
    cases = {
        "body.template_id": base | {"template_id": str(uuid.uuid4())},
        "body.template_version": base | {"template_id": template["id"], "template_version": 7},
        "body.subject": base | {"template_id": template["id"], "subject": "both"},
        "body.html": base | {"subject": "no html"},
    }
    for field, body in cases.items():
        answer = await api.client.post("/api/v1/campaigns", json=body, headers=api.auth("editor"))
        assert answer.status_code == 422, (field, answer.text)
        assert answer.headers["content-type"] == PROBLEM
        assert field in [e["field"] for e in answer.json()["errors"]], (field, answer.json())


async def test_unknown_template_is_404(api: Api) -> None:
    missing = uuid.uuid4()
    for method in ("GET", "PATCH", "DELETE"):
        answer = await api.client.request(
            method,
            f"/api/v1/templates/{missing}",
            json={"name": "x"} if method == "PATCH" else None,
            headers=api.auth("editor"),
        )
        assert answer.status_code == 404, (method, answer.text)
        assert answer.headers["content-type"] == PROBLEM
