"""/api/v1/webhooks: admin-only endpoints with a secret shown once, URLs checked against
the SSRF policy, audited changes, and the keyset-paginated delivery log."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from libs.common.settings import Settings, production_problems
from libs.webhooks.secret_box import open_sealed
from services.api.tests.support import Api

BASE = "/api/v1/webhooks"
PROBLEM = "application/problem+json"


async def _create(api: Api, **overrides: Any) -> dict[str, Any]:
    body = {"url": "https://hooks.example.com/in", "event_types": ["delivery.open"], **overrides}
    answer = await api.client.post(BASE, json=body, headers=api.auth("admin"))
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def _audit(pool: asyncpg.Pool, target_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT action, details FROM audit_log WHERE target_kind = 'webhook' AND target_id = $1"
        " ORDER BY created_at",
        target_id,
    )
    return [dict(r) for r in rows]


async def test_secret_shown_once_stored_sealed_and_audited(api: Api, pool: asyncpg.Pool) -> None:
    created = await _create(
        api,
        event_types=["delivery.open", "campaign.status", "delivery.open", "automation.step"],
        description="crm sync",
    )
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert created["event_types"] == ["automation.step", "campaign.status", "delivery.open"]
    assert created["enabled"] is True and created["failure_streak"] == 0
    shown = await api.client.get(f"{BASE}/{created['id']}", headers=api.auth("admin"))
    assert shown.status_code == 200 and "secret" not in shown.json()
    listed = await api.client.get(BASE, params={"limit": 200}, headers=api.auth("admin"))
    assert created["id"] in {w["id"] for w in listed.json()["items"]}
    assert "secret" not in listed.text
    sealed = await pool.fetchval(
        "SELECT secret_sealed FROM webhook_endpoints WHERE id = $1", uuid.UUID(created["id"])
    )
    assert secret.encode() not in sealed
    assert open_sealed(api.settings.secret_key, sealed) == secret
    (entry,) = await _audit(pool, created["id"])
    assert entry["action"] == "webhook.create"
    assert entry["details"]["url"] == "https://hooks.example.com/in"
    assert secret not in str(entry["details"])


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"url": "http://hooks.example.com/"}, "body.url", "https://"),
        ({"url": "https://127.0.0.1:8443/"}, "body.url", "MAILFLEET_WEBHOOK_ALLOWED_TARGETS"),
        ({"url": "https://169.254.169.254/x"}, "body.url", "private or special"),
        ({"url": "https://[::1]/"}, "body.url", "private or special"),
        ({"url": "https://u:p@hooks.example.com/"}, "body.url", "credentials"),
        ({"url": "x" * 2001}, "body.url", ""),
        ({"event_types": ["delivery.teleported"]}, "body.event_types", ""),
        ({"event_types": []}, "body.event_types", ""),
        ({"secret": "mine"}, "body.secret", ""),
    ],
)
async def test_bad_bodies_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str, says: str
) -> None:
    full = {"url": "https://hooks.example.com/in", "event_types": ["delivery.open"], **body}
    answer = await api.client.post(BASE, json=full, headers=api.auth("admin"))
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    problem = answer.json()
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem
    assert says in answer.text


@pytest.mark.parametrize("role", ["editor", "viewer"])
async def test_admin_only(api: Api, role: str) -> None:
    created = await _create(api)
    for method, path, body in [
        ("POST", BASE, {"url": "https://a.example.com/", "event_types": ["delivery.open"]}),
        ("GET", BASE, None),
        ("GET", f"{BASE}/{created['id']}", None),
        ("PATCH", f"{BASE}/{created['id']}", {"enabled": False}),
        ("DELETE", f"{BASE}/{created['id']}", None),
        ("GET", f"{BASE}/{created['id']}/deliveries", None),
    ]:
        answer = await api.client.request(method, path, json=body, headers=api.auth(role))
        assert answer.status_code == 403, (method, path, answer.text)
    assert (await api.client.get(BASE)).status_code == 401


async def test_disable_and_re_enable_a_failing_endpoint(api: Api, pool: asyncpg.Pool) -> None:
    created = await _create(api)
    ident = created["id"]
    # What the sender does after a streak of failures.
    await pool.execute(
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'failing',"
        " disabled_at = now(), failure_streak = 100, last_error = 'HTTP 500' WHERE id = $1",
        uuid.UUID(ident),
    )
    shown = (await api.client.get(f"{BASE}/{ident}", headers=api.auth("admin"))).json()
    assert shown["enabled"] is False and shown["disabled_reason"] == "failing"
    assert shown["failure_streak"] == 100 and shown["last_error"] == "HTTP 500"
    answer = await api.client.patch(
        f"{BASE}/{ident}", json={"enabled": True}, headers=api.auth("admin")
    )
    assert answer.status_code == 200, answer.text
    enabled = answer.json()
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None
    assert enabled["failure_streak"] == 0
    answer = await api.client.patch(
        f"{BASE}/{ident}",
        json={"enabled": False, "event_types": ["delivery.click", "delivery.bounce"]},
        headers=api.auth("admin"),
    )
    disabled = answer.json()
    assert disabled["disabled_reason"] == "admin"
    assert disabled["event_types"] == ["delivery.bounce", "delivery.click"]
    bad = await api.client.patch(
        f"{BASE}/{ident}", json={"url": "https://10.0.0.1/"}, headers=api.auth("admin")
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.url"
    actions = [e["action"] for e in await _audit(pool, ident)]
    assert actions == ["webhook.create", "webhook.update", "webhook.update"]


async def test_delete_stops_the_endpoint_and_drops_its_pending_deliveries(
    api: Api, pool: asyncpg.Pool
) -> None:
    created = await _create(api)
    ident = uuid.UUID(created["id"])
    await _deliveries(pool, ident, 2)
    answer = await api.client.delete(f"{BASE}/{ident}", headers=api.auth("admin"))
    assert answer.status_code == 200
    assert (await api.client.get(f"{BASE}/{ident}", headers=api.auth("admin"))).status_code == 404
    again = await api.client.delete(f"{BASE}/{ident}", headers=api.auth("admin"))
    assert again.status_code == 404
    statuses = await pool.fetch(
        "SELECT status, last_error FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY seq",
        ident,
    )
    # The pending one is dropped; the one delivered stays in the log as it was.
    assert [(r["status"], r["last_error"]) for r in statuses] == [
        ("failed", "endpoint deleted"),
        ("delivered", None),
    ]
    assert [e["action"] for e in await _audit(pool, str(ident))][-1] == "webhook.delete"


async def _deliveries(pool: asyncpg.Pool, endpoint: uuid.UUID, count: int) -> list[uuid.UUID]:
    ids = []
    for n in range(count):
        ids.append(
            await pool.fetchval(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, order_key,"
                " payload, next_attempt_at, created_at, status, attempts)"
                " VALUES ($1, $2, 'delivery.open', 'c1', '{}', now(),"
                " now() + make_interval(secs => $3), $4, $5) RETURNING id",
                endpoint,
                uuid.uuid4(),
                float(n),
                "delivered" if n % 2 else "pending",
                n,
            )
        )
    return ids


async def test_delivery_log_is_keyset_paginated_newest_first(api: Api, pool: asyncpg.Pool) -> None:
    created = await _create(api)
    ident = uuid.UUID(created["id"])
    ids = await _deliveries(pool, ident, 5)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await api.client.get(
            f"{BASE}/{ident}/deliveries", params=params, headers=api.auth("admin")
        )
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [d["id"] for d in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [str(i) for i in reversed(ids)]
    item = body["items"][-1]
    assert item["campaign_id"] == "c1" and item["status"] == "pending"
    assert item["next_attempt_at"] is not None
    only = await api.client.get(
        f"{BASE}/{ident}/deliveries", params={"status": "delivered"}, headers=api.auth("admin")
    )
    assert [d["id"] for d in only.json()["items"]] == [str(ids[3]), str(ids[1])]
    assert all(d["next_attempt_at"] is None for d in only.json()["items"])
    bad = await api.client.get(
        f"{BASE}/{ident}/deliveries", params={"cursor": "nope"}, headers=api.auth("admin")
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"
    missing = await api.client.get(f"{BASE}/{uuid.uuid4()}/deliveries", headers=api.auth("admin"))
    assert missing.status_code == 404


def test_allow_list_lets_tests_reach_loopback_and_production_needs_https(
    settings: Settings,
) -> None:
    allowed = settings.model_copy(update={"webhook_allowed_targets": "127.0.0.1/32"})
    assert allowed.webhook_target_policy().check_url("https://127.0.0.1:9/")[1] == "127.0.0.1"
    lenient = settings.model_copy(update={"webhook_allow_http": True})
    assert lenient.webhook_target_policy().require_https is False
    production = lenient.model_copy(update={"environment": "production"})
    assert production.webhook_target_policy().require_https is True
    assert any("MAILFLEET_WEBHOOK_ALLOW_HTTP" in p for p in production_problems(production))
    with pytest.raises(ValueError, match="MAILFLEET_WEBHOOK_ALLOWED_TARGETS"):
        Settings(MAILFLEET_WEBHOOK_ALLOWED_TARGETS="10.0.0.0/8,bad host!")  # type: ignore[call-arg]
