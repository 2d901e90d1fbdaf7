"""Fixtures of the webhooks tests: a test CA and settings with short backoff."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from conftest import make_settings
from libs.common import db
from libs.common.embedded import create_database
from libs.common.settings import Settings
from services.webhooks.tests.support import Tls, make_tls


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def webhook_settings(database_url: str, kafka_bootstrap: str, tls: Tls) -> Settings:
    # Backoff in milliseconds, not minutes: a failing receiver is retried at once.
    return make_settings(
        database_url,
        kafka_bootstrap,
        webhook_ca_file=str(tls.ca_file),
        webhook_allowed_targets="127.0.0.1/32",
        webhook_backoff_base_s=0.02,
        webhook_backoff_cap_s=0.1,
        webhook_poll_s=0.02,
        webhook_timeout_s=5,
    )


@pytest.fixture(scope="session")
def database_url(postgres_admin_dsn: str) -> str:
    """A database of the webhooks tests' own: the sender delivers every endpoint's backlog
    in the database, and other tests' endpoints (the API's, the e2e's) would take its
    slots and count in its metrics."""
    name = f"mailfleet_webhooks_{uuid.uuid4().hex[:10]}"
    dsn = asyncio.run(create_database(postgres_admin_dsn, name))
    asyncio.run(db.migrate(dsn))
    return dsn


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The root `pool`, over this folder's own database."""
    p = await db.create_pool(database_url, max_size=5)
    yield p
    await p.close()
