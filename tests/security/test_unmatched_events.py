"""An event that matches no delivery of ours suppresses nobody and counts toward no
campaign: the tracker stores it as unmatched (issue 12, item 3)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from libs.common.events import DeliveryEvent
from services.tracker.store import TrackerStore
from services.tracker.tests.support import new_campaign


def _event(kind: str, email: str, **ids: object) -> DeliveryEvent:
    return DeliveryEvent(
        event_id=f"sg-{uuid.uuid4().hex}",
        email=email,
        event=kind,  # type: ignore[arg-type]
        provider="sendgrid",
        occurred_at=datetime.now(UTC),
        **ids,  # type: ignore[arg-type]
    )


async def test_a_forged_spam_report_suppresses_nobody(pool: asyncpg.Pool) -> None:
    """The attack of the issue: a post naming any address, with no message of ours."""
    victim = f"ceo-{uuid.uuid4().hex[:8]}@client.example"
    campaign_id = await new_campaign(pool)
    await pool.execute(
        "INSERT INTO campaign_stats (campaign_id, audience_total, sent) VALUES ($1, 1, 1)",
        campaign_id,
    )
    events = [
        _event("spamreport", victim),
        _event("unsubscribe", victim, provider_message_id="not-a-message-of-ours"),
        # Our correlation ids, but naming a delivery that does not exist.
        _event("bounce", victim, campaign_id=campaign_id, recipient_id=987654),
        _event("spamreport", victim, campaign_id=uuid.uuid4(), recipient_id=1),
    ]
    fold = await TrackerStore(pool).fold_events(events)

    assert fold.unmatched == len(events)
    assert not fold.suppressed
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE email = $1", victim) == 0
    stored = await pool.fetch(
        "SELECT matched FROM delivery_events WHERE event_id = ANY($1::text[])",
        [e.event_id for e in events],
    )
    assert [r["matched"] for r in stored] == [False] * len(events)
    stats = await pool.fetchrow(
        "SELECT bounced, spam_reports, unsubscribes FROM campaign_stats WHERE campaign_id = $1",
        campaign_id,
    )
    assert dict(stats) == {"bounced": 0, "spam_reports": 0, "unsubscribes": 0}


async def test_a_matched_complaint_suppresses_the_address_that_was_mailed(
    pool: asyncpg.Pool,
) -> None:
    """Matched by our ids, the suppression is of the delivery's address, not the posted one."""
    campaign_id = await new_campaign(pool)
    mailed = f"reader-{uuid.uuid4().hex[:8]}@example.com"
    await pool.execute(
        "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id)"
        " VALUES ($1, 5, $2, 'sent', $3)",
        campaign_id,
        mailed,
        f"{campaign_id}:0",
    )
    posted = f"someone-else-{uuid.uuid4().hex[:8]}@example.com"
    fold = await TrackerStore(pool).fold_events(
        [_event("spamreport", posted, campaign_id=campaign_id, recipient_id=5)]
    )
    assert fold.unmatched == 0 and fold.suppressed == {"spamreport": 1}
    suppressed = await pool.fetch(
        "SELECT email FROM suppressions WHERE email = ANY($1::text[])", [mailed, posted]
    )
    assert [r["email"] for r in suppressed] == [mailed]
