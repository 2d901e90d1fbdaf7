"""Fixtures of the webhooks tests: a test CA and settings with short backoff."""

from __future__ import annotations

import pytest

from conftest import make_settings
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
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=500,
    )
