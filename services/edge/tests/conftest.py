"""Fixtures for the edge's tests: running edges, with and without a verification key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from libs.common.settings import Settings
from services.edge.tests.support import Edge, public_key_b64, running_edge


@pytest.fixture(scope="session")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
async def edge(settings: Settings) -> AsyncIterator[Edge]:
    """A local-setup edge: no verification key, unsigned posts allowed."""
    async with running_edge(settings, allow_unsigned_webhooks=True) as running:
        yield running


@pytest.fixture(scope="session")
async def signed_edge(
    settings: Settings, signing_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[Edge]:
    async with running_edge(
        settings, sendgrid_webhook_verification_key=public_key_b64(signing_key)
    ) as running:
        yield running
