"""Fixtures of the security tests: a signing key and a running admin API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from libs.common.settings import Settings
from services.api.app import create_app
from services.api.tests.support import Api, running


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The admin API with only its bootstrap admin key (tests here use the admin role)."""
    configured = settings.model_copy(
        update={"bootstrap_api_key": f"mf_test_admin_{uuid.uuid4().hex}"}
    )
    app = create_app(configured)
    async with running(app) as client:
        admin = configured.bootstrap_api_key
        yield Api(app, client, configured, {"admin": admin, "viewer": admin})
