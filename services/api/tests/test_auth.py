"""Authentication, roles, API keys and the admin key made at start."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import pytest

from libs.common import db
from libs.common.embedded import create_database
from libs.common.settings import Settings
from services.api.app import create_app
from services.api.bootstrap import ensure_admin_key
from services.api.tests.support import Api, running

PROBLEM = "application/problem+json"


async def test_missing_key_is_401_problem(api: Api) -> None:
    answer = await api.client.get("/api/v1/lists")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == PROBLEM
    assert answer.headers["www-authenticate"] == "Bearer"
    body = answer.json()
    assert body["status"] == 401 and "Bearer" in body["detail"]


async def test_unknown_key_is_401(api: Api) -> None:
    answer = await api.client.get(
        "/api/v1/lists", headers={"Authorization": "Bearer mf_not_a_real_key"}
    )
    assert answer.status_code == 401
    assert answer.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    ("role", "method", "path", "allowed"),
    [
        ("viewer", "GET", "/api/v1/lists", True),
        ("viewer", "GET", "/api/v1/campaigns", True),
        ("viewer", "POST", "/api/v1/lists", False),
        ("viewer", "POST", "/api/v1/campaigns", False),
        ("viewer", "GET", "/api/v1/api-keys", False),
        ("editor", "POST", "/api/v1/lists", True),
        ("editor", "GET", "/api/v1/api-keys", False),
        ("editor", "POST", "/api/v1/api-keys", False),
        ("admin", "GET", "/api/v1/api-keys", True),
        ("admin", "POST", "/api/v1/lists", True),
    ],
)
async def test_roles(api: Api, role: str, method: str, path: str, allowed: bool) -> None:
    body = {"name": "role check"} if path == "/api/v1/lists" else {}
    answer = await api.client.request(
        method, path, json=body if method == "POST" else None, headers=api.auth(role)
    )
    if allowed:
        assert answer.status_code in (200, 201), answer.text
    else:
        assert answer.status_code == 403, answer.text
        assert answer.headers["content-type"] == PROBLEM
        assert role in answer.json()["detail"]


async def test_api_key_lifecycle(api: Api, pool: asyncpg.Pool) -> None:
    created = await api.client.post(
        "/api/v1/api-keys", json={"name": "temp", "role": "viewer"}, headers=api.auth("admin")
    )
    assert created.status_code == 201
    key = created.json()["key"]
    key_id = created.json()["id"]
    assert created.json()["key_prefix"] == key[:10]

    # Only the hash is stored.
    stored = await pool.fetchrow("SELECT key_hash FROM api_keys WHERE id = $1", uuid.UUID(key_id))
    assert bytes(stored["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE key_prefix = $1", key) == 0

    ok = await api.client.get("/api/v1/lists", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200

    listed = await api.client.get("/api/v1/api-keys?limit=200", headers=api.auth("admin"))
    assert key_id in {k["id"] for k in listed.json()["items"]}
    assert all("key" not in k for k in listed.json()["items"])

    revoked = await api.client.delete(f"/api/v1/api-keys/{key_id}", headers=api.auth("admin"))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = await api.client.get("/api/v1/lists", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401


async def test_admin_cannot_revoke_own_key_and_unknown_is_404(api: Api, pool: asyncpg.Pool) -> None:
    own_id = await pool.fetchval(
        "SELECT id FROM api_keys WHERE key_hash = $1",
        hashlib.sha256(api.keys["admin"].encode()).digest(),
    )
    own = await api.client.delete(f"/api/v1/api-keys/{own_id}", headers=api.auth("admin"))
    assert own.status_code == 409
    missing = await api.client.delete(f"/api/v1/api-keys/{uuid.uuid4()}", headers=api.auth("admin"))
    assert missing.status_code == 404


async def test_bad_role_is_422_with_field(api: Api) -> None:
    answer = await api.client.post(
        "/api/v1/api-keys", json={"name": "x", "role": "root"}, headers=api.auth("admin")
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "body.role"


async def test_failed_attempts_are_rate_limited(api_settings: Settings) -> None:
    app = create_app(api_settings, auth_failures_per_minute=3)
    async with running(app) as client:
        for _ in range(3):
            answer = await client.get("/api/v1/lists", headers={"Authorization": "Bearer guess"})
            assert answer.status_code == 401
        valid = await client.get(
            "/api/v1/lists", headers={"Authorization": f"Bearer {api_settings.bootstrap_api_key}"}
        )
        assert valid.status_code == 200  # a key that validates is never refused
        blocked = await client.get("/api/v1/lists", headers={"Authorization": "Bearer guess"})
        assert blocked.status_code == 429
        assert blocked.headers["content-type"] == PROBLEM
        assert int(blocked.headers["retry-after"]) >= 1


async def test_bootstrap_key_is_idempotent(api: Api, pool: asyncpg.Pool) -> None:
    digest = hashlib.sha256(api.keys["admin"].encode()).digest()
    assert await ensure_admin_key(pool, api.keys["admin"]) is None
    rows = await pool.fetch("SELECT role FROM api_keys WHERE key_hash = $1", digest)
    assert [r["role"] for r in rows] == ["admin"]


async def test_admin_key_generated_once_when_none_exists(postgres_admin_dsn: str) -> None:
    name = f"mailfleet_api_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(postgres_admin_dsn, name)
    await db.migrate(dsn)
    fresh = await db.create_pool(dsn, max_size=2)
    try:
        key = await ensure_admin_key(fresh, "")
        assert key is not None and key.startswith("mf_")
        assert await ensure_admin_key(fresh, "") is None
        rows = await fresh.fetch("SELECT role, key_hash FROM api_keys")
        assert len(rows) == 1 and rows[0]["role"] == "admin"
        assert bytes(rows[0]["key_hash"]) == hashlib.sha256(key.encode()).digest()
    finally:
        await fresh.close()
        admin = await asyncpg.connect(postgres_admin_dsn)
        await admin.execute(f'DROP DATABASE "{name}"')
        await admin.close()
