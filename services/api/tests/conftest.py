"""Fixtures for the API tests: one running app (lifespan included) and keys of each role."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from libs.common.settings import Settings
from services.api.app import create_app
from services.api.tests.support import UPLOAD_LIMIT, Api, running


@pytest.fixture(scope="session")
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "bootstrap_api_key": f"mf_test_admin_{uuid.uuid4().hex}",
            "max_upload_bytes": UPLOAD_LIMIT,
        }
    )


@pytest.fixture(scope="session")
async def api(api_settings: Settings) -> AsyncIterator[Api]:
    app = create_app(api_settings)
    async with running(app) as client:
        keys = {"admin": api_settings.bootstrap_api_key}
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        for role in ("editor", "viewer"):
            answer = await client.post(
                "/api/v1/api-keys", json={"name": f"test {role}", "role": role}, headers=admin
            )
            assert answer.status_code == 201, answer.text
            keys[role] = answer.json()["key"]
        yield Api(app, client, api_settings, keys)
