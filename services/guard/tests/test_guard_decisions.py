"""The guard's decisions with its clock in hand: what it asks for, when, and how often.

Its repository and producer are stand-ins that record what was asked (no database, no
broker): what is tested is the Guard's own bookkeeping between records, state and pauses.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from libs.common.events import CampaignControl, DeliveryResult, RecipientOutcome
from libs.common.kafka import Consumed
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.guard.app import REASK_S, Guard
from services.guard.rules import CampaignState

CAMPAIGN = uuid.UUID(int=7)


class Repo:
    def __init__(self) -> None:
        self.state = CampaignState("in_progress")
        self.fail_next = False

    async def campaign_state(self, campaign_id: uuid.UUID) -> CampaignState | None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionRefusedError("database away")
        return self.state if campaign_id == CAMPAIGN else None


class Producer:
    def __init__(self) -> None:
        self.sent: list[CampaignControl] = []

    async def send(self, topic: Any, key: str, event: CampaignControl) -> None:
        self.sent.append(event)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def storm(batch: int, at_ms: int) -> Consumed[DeliveryResult]:
    """500 outcomes, 10 % of them hard bounces at send time."""
    now = datetime.now(UTC)
    outcomes = [
        RecipientOutcome(
            recipient_id=batch * 500 + i,
            email=f"p{i}@example.com",
            status="failed" if i % 10 == 0 else "sent",
            error="hard bounce: 550 5.1.1 unknown user" if i % 10 == 0 else None,
        )
        for i in range(500)
    ]
    result = DeliveryResult(
        batch_id=f"{CAMPAIGN}:{batch}", campaign_id=CAMPAIGN, batch_no=batch, batches_total=2,
        audience_total=1000, suppressed_total=0, provider="smtp", outcomes=outcomes,
        started_at=now, finished_at=now,
    )  # fmt: skip
    return Consumed(result, 0, batch, at_ms)


@pytest.fixture
def setup() -> tuple[Guard, Repo, Producer, Clock]:
    repo, producer, clock = Repo(), Producer(), Clock()
    settings = Settings(guard_hold_off_seconds=60)
    ctx = ServiceContext("guard", settings, None, producer, asyncio.Event())  # type: ignore[arg-type]
    return Guard(ctx, repo, clock), repo, producer, clock  # type: ignore[arg-type]


async def test_a_retried_handler_still_asks_for_the_pause(
    setup: tuple[Guard, Repo, Producer, Clock],
) -> None:
    guard, repo, producer, clock = setup
    items = [storm(0, int(clock.now * 1000)), storm(1, int(clock.now * 1000))]
    repo.fail_next = True
    with pytest.raises(ConnectionRefusedError):
        await guard.on_results(items)  # counted, but the campaign could not be read
    await guard.on_results(items)  # the consumer's retry: nothing new to count
    assert [(e.action, e.origin, e.reason) for e in producer.sent] == [
        ("pause", "guard", "hard_bounce_rate 0.10 > 0.05")
    ]
    assert guard.windows.campaign(CAMPAIGN, clock.now).sends == 1000  # counted once


async def test_asks_once_then_holds_off_after_a_resume(
    setup: tuple[Guard, Repo, Producer, Clock],
) -> None:
    guard, repo, producer, clock = setup
    await guard.on_results([storm(0, int(clock.now * 1000)), storm(1, int(clock.now * 1000))])
    assert len(producer.sent) == 1
    clock.now += 1
    await guard.tick()  # the scheduler has not applied it yet: not asked again
    assert len(producer.sent) == 1
    clock.now += REASK_S
    await guard.tick()  # still not applied after REASK_S: asked again (harmless)
    assert len(producer.sent) == 2
    repo.state = CampaignState("paused")
    clock.now += 3
    await guard.tick()
    # An admin resumes: held off for 60 s, although the storm is still in the window.
    repo.state = CampaignState("in_progress", resumed_at=clock.now)
    clock.now += 3
    await guard.tick()
    clock.now += 50
    await guard.tick()
    assert len(producer.sent) == 2
    clock.now += 10  # past the hold-off, the storm still in the 5-minute window
    await guard.tick()
    assert len(producer.sent) == 3
