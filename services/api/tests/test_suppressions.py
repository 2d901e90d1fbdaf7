"""The suppression list over HTTP: roles, add (idempotent), look up, page, remove."""

from __future__ import annotations

import uuid

from services.api.tests.support import Api

PATH = "/api/v1/suppressions"
PROBLEM = "application/problem+json"


def _address() -> str:
    return f"Someone-{uuid.uuid4().hex[:12]}@Example.com"


async def test_editor_adds_and_viewer_reads(api: Api) -> None:
    email = _address()
    added = await api.client.post(PATH, json={"email": email}, headers=api.auth("editor"))
    assert added.status_code == 201, added.text
    row = added.json()
    assert (row["email"], row["reason"], row["source"]) == (
        email.lower(),
        "manual",
        "api:test editor",
    )

    again = await api.client.post(
        PATH, json={"email": email.upper(), "reason": "bounce"}, headers=api.auth("editor")
    )
    assert again.status_code == 200  # already suppressed: its first reason is kept
    assert again.json() == row

    found = await api.client.get(PATH, params={"email": email.upper()}, headers=api.auth("viewer"))
    assert found.status_code == 200
    assert found.json() == {"items": [row], "next_cursor": None}
    absent = await api.client.get(PATH, params={"email": _address()}, headers=api.auth("viewer"))
    assert absent.json()["items"] == []


async def test_roles_and_validation(api: Api) -> None:
    body = {"email": _address()}
    viewer = await api.client.post(PATH, json=body, headers=api.auth("viewer"))
    assert viewer.status_code == 403 and viewer.headers["content-type"] == PROBLEM
    anonymous = await api.client.get(PATH)
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == PROBLEM
    for bad in ({"email": "not-an-address"}, body | {"reason": "because"}, body | {"x": 1}):
        answer = await api.client.post(PATH, json=bad, headers=api.auth("editor"))
        assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM, bad
    cannot_remove = await api.client.delete(f"{PATH}/{body['email']}", headers=api.auth("viewer"))
    assert cannot_remove.status_code == 403


async def test_pages_in_address_order(api: Api) -> None:
    for _ in range(3):
        answer = await api.client.post(PATH, json={"email": _address()}, headers=api.auth("editor"))
        assert answer.status_code == 201
    first = (await api.client.get(PATH, params={"limit": 2}, headers=api.auth("viewer"))).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = (
        await api.client.get(
            PATH, params={"limit": 2, "cursor": first["next_cursor"]}, headers=api.auth("viewer")
        )
    ).json()
    emails = [item["email"] for item in first["items"] + second["items"]]
    assert second["items"] and emails == sorted(emails) and len(set(emails)) == len(emails)


async def test_remove_by_path_or_query(api: Api) -> None:
    by_path, by_query = _address(), _address()
    for email in (by_path, by_query):
        await api.client.post(PATH, json={"email": email}, headers=api.auth("editor"))

    removed = await api.client.delete(f"{PATH}/{by_path.upper()}", headers=api.auth("editor"))
    assert removed.status_code == 204
    gone = await api.client.delete(f"{PATH}/{by_path}", headers=api.auth("editor"))
    assert gone.status_code == 404 and gone.headers["content-type"] == PROBLEM

    removed = await api.client.delete(PATH, params={"email": by_query}, headers=api.auth("editor"))
    assert removed.status_code == 204
    for email in (by_path, by_query):
        left = await api.client.get(PATH, params={"email": email}, headers=api.auth("viewer"))
        assert left.json()["items"] == []
    missing_email = await api.client.delete(PATH, headers=api.auth("editor"))
    assert missing_email.status_code == 422
