"""Fixtures of the bounce poller's tests: a real dovecot IMAP server for the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from services.bounces.tests.dovecot import Dovecot, private_dovecot


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot() as server:
        yield server


@pytest.fixture(scope="session")
async def producer(settings: Settings) -> AsyncIterator[EventProducer]:
    p = EventProducer(settings)
    await p.start()
    yield p
    await p.stop()
