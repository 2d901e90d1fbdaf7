"""Own open and click tracking is on by default and switched per campaign through the API."""

from __future__ import annotations

from typing import Any

from services.api.tests.support import Api

PROBLEM = "application/problem+json"


async def _create(api: Api, **fields: Any) -> Any:
    lists = await api.client.post("/api/v1/lists", json={"name": "t"}, headers=api.auth("editor"))
    body = {
        "name": "tracked",
        "subject": "Hi",
        "html": '<p><a href="https://shop.example.org/">shop</a></p>',
        "from_email": "news@example.com",
        "list_id": lists.json()["id"],
        **fields,
    }
    return await api.client.post("/api/v1/campaigns", json=body, headers=api.auth("editor"))


async def test_on_by_default_and_switched_per_campaign(api: Api) -> None:
    default = await _create(api)
    assert default.status_code == 201 and default.json()["tracking"] is True
    off = await _create(api, tracking=False)
    assert off.status_code == 201 and off.json()["tracking"] is False
    campaign = off.json()["id"]
    read = await api.client.get(f"/api/v1/campaigns/{campaign}", headers=api.auth("viewer"))
    assert read.json()["tracking"] is False
    on = await api.client.patch(
        f"/api/v1/campaigns/{campaign}", json={"tracking": True}, headers=api.auth("editor")
    )
    assert on.status_code == 200 and on.json()["tracking"] is True
    # A duplicate keeps the setting of its source.
    copy = await api.client.post(
        f"/api/v1/campaigns/{campaign}/duplicate", headers=api.auth("editor")
    )
    assert copy.json()["tracking"] is True


async def test_bad_values_name_the_field(api: Api) -> None:
    created = await _create(api, tracking="maybe")
    assert created.status_code == 422 and created.headers["content-type"] == PROBLEM
    assert [e["field"] for e in created.json()["errors"]] == ["body.tracking"]
    campaign = (await _create(api)).json()["id"]
    for value in (None, "maybe"):
        answer = await api.client.patch(
            f"/api/v1/campaigns/{campaign}", json={"tracking": value}, headers=api.auth("editor")
        )
        assert answer.status_code == 422, value
        assert [e["field"] for e in answer.json()["errors"]] == ["body.tracking"]
