"""An API app with an admin, an editor and a viewer key, for the security tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libs.common.settings import Settings
from services.api.app import create_app
from services.api.tests.support import Api, running


@asynccontextmanager
async def api_with_roles(settings: Settings, **changes: object) -> AsyncIterator[Api]:
    admin_key = f"mf_security_admin_{uuid.uuid4().hex}"
    app_settings = settings.model_copy(update={"bootstrap_api_key": admin_key, **changes})
    app = create_app(app_settings)
    async with running(app) as client:
        keys = {"admin": admin_key}
        for role in ("editor", "viewer"):
            answer = await client.post(
                "/api/v1/api-keys",
                json={"name": f"security {role}", "role": role},
                headers={"Authorization": f"Bearer {admin_key}"},
            )
            assert answer.status_code == 201, answer.text
            keys[role] = answer.json()["key"]
        yield Api(app, client, app_settings, keys)
