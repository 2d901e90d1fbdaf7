"""Fixtures of the bounce poller's tests: a real dovecot IMAP server for the session."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from services.bounces.tests.dovecot import Dovecot, missing_reason, start_dovecot


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    # Not under pytest's tmp_path: that is 0700 root, and dovecot's auth process (its own
    # user) must read the passwd file.
    folder = Path(tempfile.mkdtemp(prefix="mailfleet-dovecot-"))
    server = start_dovecot(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
async def producer(settings: Settings) -> AsyncIterator[EventProducer]:
    p = EventProducer(settings)
    await p.start()
    yield p
    await p.stop()
