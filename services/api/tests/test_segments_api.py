"""Segments over HTTP: create, read, page, edit, delete, count; a bad filter names its node."""

from __future__ import annotations

import uuid

import asyncpg

from services.api.tests.support import Api

PATH = "/api/v1/segments"
PROBLEM = "application/problem+json"


async def test_segment_lifecycle_and_count(api: Api, pool: asyncpg.Pool) -> None:
    tag = uuid.uuid4().hex[:8]
    list_id = await pool.fetchval(
        "INSERT INTO lists (name) VALUES ($1) RETURNING id", f"segments {tag}"
    )
    for i, city in enumerate(["Pune", "Pune", "Paris", "Pune"]):
        await pool.execute(
            "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, $3)",
            list_id,
            f"r{i}.{tag}@example.com",
            {"city": city, "tag": tag},
        )
    await pool.execute(
        "INSERT INTO suppressions (email, reason) VALUES ($1, 'unsubscribe')",
        f"r3.{tag}@example.com",
    )
    body = {
        "name": "Pune, subscribed",
        "filter": {
            "and": [
                {"field": "tag", "op": "eq", "value": tag},
                {"field": "city", "op": "eq", "value": "Pune"},
                {"suppressed": False},
            ]
        },
    }
    viewer = await api.client.post(PATH, json=body, headers=api.auth("viewer"))
    assert viewer.status_code == 403
    created = await api.client.post(PATH, json=body, headers=api.auth("editor"))
    assert created.status_code == 201, created.text
    segment = created.json()
    assert segment["filter"] == body["filter"] and segment["description"] is None
    sid = segment["id"]

    count = await api.client.get(f"{PATH}/{sid}/count", headers=api.auth("viewer"))
    assert count.status_code == 200, count.text
    assert count.json()["count"] == 2

    got = await api.client.get(f"{PATH}/{sid}", headers=api.auth("viewer"))
    assert got.json() == segment
    page = await api.client.get(PATH, params={"limit": 1}, headers=api.auth("viewer"))
    assert page.status_code == 200 and len(page.json()["items"]) == 1

    wider = {"field": "tag", "op": "eq", "value": tag}
    edited = await api.client.patch(
        f"{PATH}/{sid}",
        json={"filter": wider, "description": "all of them"},
        headers=api.auth("editor"),
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["name"], edited.json()["description"]) == (
        "Pune, subscribed",
        "all of them",
    )
    count = await api.client.get(f"{PATH}/{sid}/count", headers=api.auth("viewer"))
    assert count.json()["count"] == 4

    audit = await api.client.get(
        "/api/v1/audit", params={"target_id": sid}, headers=api.auth("admin")
    )
    assert [a["action"] for a in audit.json()["items"]] == ["segment.update", "segment.create"]

    deleted = await api.client.delete(f"{PATH}/{sid}", headers=api.auth("editor"))
    assert deleted.status_code == 204
    for path in (f"{PATH}/{sid}", f"{PATH}/{sid}/count"):
        gone = await api.client.get(path, headers=api.auth("viewer"))
        assert gone.status_code == 404 and gone.headers["content-type"] == PROBLEM


async def test_a_bad_filter_is_a_422_that_points_at_the_node(api: Api) -> None:
    bad = {
        "name": "bad",
        "filter": {
            "and": [{"field": "city", "op": "eq", "value": "Pune"}, {"field": "x", "op": "like"}]
        },
    }
    answer = await api.client.post(PATH, json=bad, headers=api.auth("editor"))
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["errors"][0]["field"] == "body.filter.and[1].op"
    assert "$.and[1].op" in problem["detail"]

    created = await api.client.post(
        PATH,
        json={"name": "ok", "filter": {"field": "a", "op": "is_empty"}},
        headers=api.auth("editor"),
    )
    sid = created.json()["id"]
    for change, field in (
        (
            {"filter": {"not": {"engaged": "opened", "within_days": 0}}},
            "body.filter.not.within_days",
        ),
        ({"filter": None}, "body.filter"),
        ({"name": None}, "body.name"),
    ):
        answer = await api.client.patch(f"{PATH}/{sid}", json=change, headers=api.auth("editor"))
        assert answer.status_code == 422, change
        assert answer.json()["errors"][0]["field"] == field

    huge = {"name": "huge", "filter": {"field": "a", "op": "in", "value": ["x" * 400] * 200}}
    answer = await api.client.post(PATH, json=huge, headers=api.auth("editor"))
    assert answer.status_code == 422 and "bytes" in answer.json()["detail"]
