"""Editors may remove only manual suppressions; an unsubscribe, a spam report or a bounce
needs an admin and a reason."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from libs.common import suppressions
from libs.common.settings import Settings
from services.api.tests.support import Api
from tests.security.api_support import api_with_roles


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with api_with_roles(settings) as running_api:
        yield running_api


async def _suppressed(pool: asyncpg.Pool, reason: str) -> str:
    email = f"person-{uuid.uuid4().hex[:10]}@example.com"
    assert await suppressions.add_suppression(pool, email, reason, source=f"sendgrid:{reason}")
    return email


async def _still_suppressed(pool: asyncpg.Pool, email: str) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM suppressions WHERE email = $1", email))


@pytest.mark.parametrize("reason", ["unsubscribe", "spamreport", "bounce"])
async def test_an_editor_cannot_remove_a_recipients_own_choice(
    api: Api, pool: asyncpg.Pool, reason: str
) -> None:
    email = await _suppressed(pool, reason)
    answer = await api.client.delete(
        f"/api/v1/suppressions/{email}",
        params={"removal_reason": "they asked us on the phone"},
        headers=api.auth("editor"),
    )
    assert answer.status_code == 403, answer.text
    assert reason in answer.json()["detail"]
    assert await _still_suppressed(pool, email)


async def test_an_editor_cannot_remove_an_unsubscribe_by_query_either(
    api: Api, pool: asyncpg.Pool
) -> None:
    email = await _suppressed(pool, "unsubscribe")
    answer = await api.client.delete(
        "/api/v1/suppressions", params={"email": email}, headers=api.auth("editor")
    )
    assert answer.status_code == 403
    assert await _still_suppressed(pool, email)


async def test_an_editor_may_remove_a_manual_suppression(api: Api, pool: asyncpg.Pool) -> None:
    email = await _suppressed(pool, "manual")
    answer = await api.client.delete(f"/api/v1/suppressions/{email}", headers=api.auth("editor"))
    assert answer.status_code == 204
    assert not await _still_suppressed(pool, email)


async def test_an_admin_needs_a_reason(api: Api, pool: asyncpg.Pool) -> None:
    email = await _suppressed(pool, "unsubscribe")
    missing = await api.client.delete(f"/api/v1/suppressions/{email}", headers=api.auth("admin"))
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "query.removal_reason"
    blank = await api.client.delete(
        f"/api/v1/suppressions/{email}",
        params={"removal_reason": "   "},
        headers=api.auth("admin"),
    )
    assert blank.status_code == 422
    assert await _still_suppressed(pool, email)
    done = await api.client.delete(
        f"/api/v1/suppressions/{email}",
        params={"removal_reason": "re-subscribed in writing, ticket 4711"},
        headers=api.auth("admin"),
    )
    assert done.status_code == 204
    assert not await _still_suppressed(pool, email)


def test_the_rule_itself() -> None:
    suppressions.check_removal("manual", privileged=False, justification=None)
    suppressions.check_removal("bounce", privileged=True, justification="mailbox fixed")
    with pytest.raises(suppressions.RemovalRefused) as refused:
        suppressions.check_removal("bounce", privileged=False, justification="fixed")
    assert refused.value.needs_privilege
