"""Each end-to-end module starts with no campaign of an earlier test in flight."""

from __future__ import annotations

import asyncpg
import pytest

from tests.e2e.harness import settle_earlier_campaigns


@pytest.fixture(scope="module", autouse=True)
async def no_earlier_campaign_in_flight(pool: asyncpg.Pool) -> None:
    await settle_earlier_campaigns(pool)
