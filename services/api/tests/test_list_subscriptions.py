"""A list's subscription settings (opt-in, confirmation sender, editable fields, consent
text and its version), and the consent basis stated by API adds and imports."""

from __future__ import annotations

import uuid

import asyncpg

from services.api.tests.support import Api, find_event


async def test_double_opt_in_settings_and_consent_text_versions(api: Api) -> None:
    editor = api.auth("editor")
    refused = await api.client.post(
        "/api/v1/lists", json={"name": "News", "opt_in": "double"}, headers=editor
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "body.confirmation_from_email"

    created = await api.client.post(
        "/api/v1/lists",
        json={
            "name": "News",
            "opt_in": "double",
            "confirmation_from_email": "news@example.com",
            "editable_fields": ["first_name"],
            "consent_text": "Weekly news; unsubscribe at any time.",
        },
        headers=editor,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["opt_in"] == "double" and body["editable_fields"] == ["first_name"]
    assert len(body["public_id"]) == 32 and body["public_id"] != body["id"].replace("-", "")
    assert body["consent_text_version"] == 1
    path = f"/api/v1/lists/{body['id']}"

    same = await api.client.patch(
        path, json={"consent_text": "Weekly news; unsubscribe at any time."}, headers=editor
    )
    assert same.json()["consent_text_version"] == 1  # unchanged text: same version
    changed = await api.client.patch(path, json={"consent_text": "Daily news."}, headers=editor)
    assert changed.json()["consent_text_version"] == 2

    no_sender = await api.client.patch(path, json={"confirmation_from_email": None}, headers=editor)
    assert no_sender.status_code == 422  # still double opt-in
    bad_field = await api.client.patch(path, json={"editable_fields": ["email"]}, headers=editor)
    assert bad_field.status_code == 422
    null = await api.client.patch(path, json={"opt_in": None}, headers=editor)
    assert null.status_code == 422
    single = await api.client.patch(path, json={"opt_in": "single"}, headers=editor)
    assert single.status_code == 200 and single.json()["opt_in"] == "single"


async def test_api_add_and_import_state_their_consent_basis(api: Api, pool: asyncpg.Pool) -> None:
    editor = api.auth("editor")
    list_id = (await api.client.post("/api/v1/lists", json={"name": "B2B"}, headers=editor)).json()[
        "id"
    ]
    email = f"c-{uuid.uuid4().hex[:8]}@example.com"
    added = await api.client.post(
        f"/api/v1/lists/{list_id}/recipients",
        json={"email": email, "consent": {"basis": "contract"}},
        headers=editor,
    )
    assert added.status_code == 201, added.text
    row = await pool.fetchrow("SELECT basis, source, status FROM consents WHERE email = $1", email)
    assert row is not None and dict(row) == {
        "basis": "contract",
        "source": "api",
        "status": "given",
    }
    bad = await api.client.post(
        f"/api/v1/lists/{list_id}/recipients",
        json={"email": f"x{email}", "consent": {"basis": "because"}},
        headers=editor,
    )
    assert bad.status_code == 422

    upload = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("people.csv", b"email\na@example.com\n", "text/csv")},
        data={"consent_basis": "legitimate_interest", "consent_source": "fair-2030"},
        headers=editor,
    )
    assert upload.status_code == 202, upload.text
    import_id = upload.json()["id"]
    _, event = await find_event(
        api.settings, "import.requested", lambda e: e.get("import_id") == import_id
    )
    assert event["consent"] == {"basis": "legitimate_interest", "source": "fair-2030"}
    refused = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("people.csv", b"email\na@example.com\n", "text/csv")},
        data={"consent_basis": "vibes"},
        headers=editor,
    )
    assert refused.status_code == 422
