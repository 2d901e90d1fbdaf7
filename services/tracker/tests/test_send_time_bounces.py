"""A hard bounce at send time (SMTP 550 5.1.1 at RCPT) suppresses the address, exactly once."""

from __future__ import annotations

import asyncpg

from libs.common.events import DeliveryResult, RecipientOutcome
from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from libs.mail.bounces import hard_bounce_error
from services.tracker.tests.support import (
    make_results,
    new_campaign,
    publish_results,
    running_tracker,
    stats_of,
    wait_for,
)


def with_refusals(result: DeliveryResult, dead: str, blocked: str) -> DeliveryResult:
    """Recipient 2 dead (5.1.1), recipient 3 blocked by policy (5.7.1)."""
    outcomes = []
    for o in result.outcomes:
        if o.recipient_id == 2:
            error = hard_bounce_error(550, f"5.1.1 <{dead}>: User unknown")
            o = RecipientOutcome(recipient_id=2, email=dead.upper(), status="failed", error=error)
        elif o.recipient_id == 3:
            o = RecipientOutcome(
                recipient_id=3, email=blocked, status="failed", error="refused: 550 5.7.1 policy"
            )
        outcomes.append(o)
    return result.model_copy(update={"outcomes": outcomes, "provider": "smtp"})


async def test_a_send_time_hard_bounce_suppresses_once(
    tracker_settings: Settings, pool: asyncpg.Pool, producer: EventProducer
) -> None:
    cid = await new_campaign(pool)
    dead, blocked = f"dead-{cid.hex[:8]}@example.com", f"blocked-{cid.hex[:8]}@example.com"
    results = [with_refusals(r, dead, blocked) for r in make_results(cid, 2, 5)]
    async with running_tracker(tracker_settings, pool, producer):
        await publish_results(producer, results)
        # A replay of the first batch (a re-emit) comes back after the whole plan.
        await publish_results(producer, [results[0].model_copy(update={"replayed": True})])

        async def folded() -> bool:
            stats = await stats_of(pool, cid)
            return stats is not None and stats["batches_done"] == 2

        await wait_for(folded, what="both batches")
    rows = await pool.fetch(
        "SELECT email, reason, source FROM suppressions WHERE email = ANY($1::text[])",
        [dead, blocked],
    )
    assert [dict(r) for r in rows] == [{"email": dead, "reason": "bounce", "source": "smtp:send"}]
    stats = await stats_of(pool, cid)
    assert stats is not None and (stats["sent"], stats["failed"]) == (8, 2)
