"""Fixtures of the tracker's tests: settings with short group sessions, a producer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conftest import make_settings
from libs.common.kafka import EventProducer
from libs.common.settings import Settings


@pytest.fixture(scope="session")
def tracker_settings(database_url: str, kafka_bootstrap: str, settings: Settings) -> Settings:
    # The tests' short group sessions (conftest.make_settings): a killed tracker's
    # partitions move to its successor within seconds.
    return make_settings(database_url, kafka_bootstrap)


@pytest.fixture(scope="session")
async def producer(tracker_settings: Settings) -> AsyncIterator[EventProducer]:
    p = EventProducer(tracker_settings)
    await p.start()
    yield p
    await p.stop()
