"""Recipients by API: one add/edit/remove at a time, validated like the importer."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from services.api import recipients_repo
from services.api.tests.support import Api

PROBLEM = "application/problem+json"


async def _new_list(api: Api) -> str:
    answer = await api.client.post("/api/v1/lists", json={"name": "r"}, headers=api.auth("editor"))
    return str(answer.json()["id"])


async def _add(api: Api, list_id: str, email: str, **fields: Any) -> Any:
    return await api.client.post(
        f"/api/v1/lists/{list_id}/recipients",
        json={"email": email, "fields": fields},
        headers=api.auth("editor"),
    )


async def test_add_normalises_and_counts(api: Api) -> None:
    list_id = await _new_list(api)
    added = await _add(api, list_id, "  Ada.Lovelace@Example.COM ", first_name="Ada", age=36)
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["email"] == "ada.lovelace@example.com"
    assert body["fields"] == {"first_name": "Ada", "age": 36}
    one = await api.client.get(
        f"/api/v1/lists/{list_id}/recipients/{body['id']}", headers=api.auth("viewer")
    )
    assert one.status_code == 200 and one.json() == body
    listed = await api.client.get(f"/api/v1/lists/{list_id}", headers=api.auth("viewer"))
    assert listed.json()["recipient_count"] == 1


async def test_duplicate_is_409_with_the_existing_id(api: Api) -> None:
    list_id = await _new_list(api)
    first = await _add(api, list_id, "dup@example.com")
    again = await _add(api, list_id, "DUP@example.com ")
    assert again.status_code == 409
    assert again.headers["content-type"] == PROBLEM
    assert str(first.json()["id"]) in again.json()["detail"]


async def test_invalid_addresses_are_refused_with_the_importers_reason(api: Api) -> None:
    list_id = await _new_list(api)
    cases = {
        "not-an-address": "invalid email address",
        "   ": "missing email address",
        "a" * 65 + "@example.com": "part before @ longer than 64 characters",
        "x@localhost": "invalid email address",
    }
    for email, reason in cases.items():
        answer = await _add(api, list_id, email)
        assert answer.status_code == 422, (email, answer.text)
        assert answer.json()["errors"] == [{"field": "body.email", "message": reason}]


async def test_bad_fields_are_refused(api: Api) -> None:
    list_id = await _new_list(api)
    for fields in ({"email": "x"}, {"first name": "x"}, {"nested": {"a": 1}}, {"n": 2**70}):
        answer = await api.client.post(
            f"/api/v1/lists/{list_id}/recipients",
            json={"email": "f@example.com", "fields": fields},
            headers=api.auth("editor"),
        )
        assert answer.status_code == 422, (fields, answer.text)
        assert answer.json()["errors"][0]["field"].startswith("body.fields"), answer.json()


async def test_suppressed_address_is_refused(api: Api, pool: asyncpg.Pool) -> None:
    list_id = await _new_list(api)
    email = f"gone-{uuid.uuid4().hex[:8]}@example.com"
    await pool.execute(
        "INSERT INTO suppressions (email, reason, source) VALUES ($1, 'unsubscribe', 'test')", email
    )
    answer = await _add(api, list_id, email.upper())
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/suppressed")
    assert "unsubscribe" in answer.json()["detail"]

    # Changing an existing recipient's address to a suppressed one is refused too.
    other = await _add(api, list_id, "kept@example.com")
    patch = await api.client.patch(
        f"/api/v1/lists/{list_id}/recipients/{other.json()['id']}",
        json={"email": email},
        headers=api.auth("editor"),
    )
    assert patch.status_code == 409 and patch.json()["type"].endswith("/suppressed")


async def test_patch_merges_fields_and_changes_address(api: Api) -> None:
    list_id = await _new_list(api)
    created = (await _add(api, list_id, "p@example.com", first_name="Pat", plan="free")).json()
    path = f"/api/v1/lists/{list_id}/recipients/{created['id']}"
    patched = await api.client.patch(
        path,
        json={
            "email": " New@Example.com",
            "fields": {"plan": "pro", "first_name": None, "vip": True},
        },
        headers=api.auth("editor"),
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["email"] == "new@example.com"
    assert body["fields"] == {"plan": "pro", "vip": True}
    assert body["updated_at"] >= created["updated_at"]

    taken = await _add(api, list_id, "taken@example.com")
    clash = await api.client.patch(
        path, json={"email": "taken@example.com"}, headers=api.auth("editor")
    )
    assert clash.status_code == 409 and str(taken.json()["id"]) in clash.json()["detail"]
    null = await api.client.patch(path, json={"email": None}, headers=api.auth("editor"))
    assert null.status_code == 422


async def test_list_paginates_in_added_order_and_filters(api: Api) -> None:
    list_id = await _new_list(api)
    emails = [f"r{i}@example.com" for i in range(5)]
    for email in emails:
        assert (await _add(api, list_id, email)).status_code == 201
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await api.client.get(
            f"/api/v1/lists/{list_id}/recipients", params=params, headers=api.auth("viewer")
        )
        assert page.status_code == 200, page.text
        seen += [r["email"] for r in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == emails
    one = await api.client.get(
        f"/api/v1/lists/{list_id}/recipients",
        params={"email": "R3@EXAMPLE.com"},
        headers=api.auth("viewer"),
    )
    assert [r["email"] for r in one.json()["items"]] == ["r3@example.com"]
    bad = await api.client.get(
        f"/api/v1/lists/{list_id}/recipients", params={"cursor": "x"}, headers=api.auth("viewer")
    )
    assert bad.status_code == 422


async def test_remove_by_id_and_by_address(api: Api) -> None:
    list_id = await _new_list(api)
    first = (await _add(api, list_id, "one@example.com")).json()
    await _add(api, list_id, "two@example.com")
    path = f"/api/v1/lists/{list_id}/recipients"
    assert (
        await api.client.delete(f"{path}/{first['id']}", headers=api.auth("editor"))
    ).status_code == 204
    assert (
        await api.client.get(f"{path}/{first['id']}", headers=api.auth("viewer"))
    ).status_code == 404
    by_address = await api.client.delete(
        path, params={"email": "TWO@example.com"}, headers=api.auth("editor")
    )
    assert by_address.status_code == 204
    again = await api.client.delete(
        path, params={"email": "two@example.com"}, headers=api.auth("editor")
    )
    assert again.status_code == 404 and again.headers["content-type"] == PROBLEM
    left = await api.client.get(path, headers=api.auth("viewer"))
    assert left.json()["items"] == []


async def test_recipient_of_another_list_is_not_found(api: Api) -> None:
    mine, other = await _new_list(api), await _new_list(api)
    created = (await _add(api, other, "elsewhere@example.com")).json()
    answer = await api.client.get(
        f"/api/v1/lists/{mine}/recipients/{created['id']}", headers=api.auth("viewer")
    )
    assert answer.status_code == 404
    missing_list = await _add(api, str(uuid.uuid4()), "x@example.com")
    assert missing_list.status_code == 404


async def test_insert_into_a_list_deleted_meanwhile_is_refused(pool: asyncpg.Pool) -> None:
    """`recipients` has no foreign key (migration 0008): the insert itself checks and
    locks the list, so no recipient is ever left without one."""
    list_id = uuid.uuid4()
    with pytest.raises(recipients_repo.ListGone):
        await recipients_repo.insert_recipient(pool, list_id, "orphan@example.com", {})
    assert not await pool.fetchval("SELECT count(*) FROM recipients WHERE list_id = $1", list_id)

    await pool.execute("INSERT INTO lists (id, name) VALUES ($1, 'r')", list_id)
    async with pool.acquire() as adding, adding.transaction():
        row = await recipients_repo.insert_recipient(adding, list_id, "ada@example.com", {})
        assert row is not None
        async with pool.acquire() as deleting:
            await deleting.execute("SET lock_timeout = '200ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await deleting.execute("DELETE FROM lists WHERE id = $1", list_id)
            await deleting.execute("RESET lock_timeout")
