"""The tracker's pure rules: outcome threshold, event folding, suppression, health."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from libs.common.events import DeliveryEvent, DeliveryEventType
from libs.stats.report import campaign_report, health
from services.tracker.activity import (
    RecipientActivity,
    apply_event,
    message_id_candidates,
    suppression_reason,
)
from services.tracker.results import CampaignTotals, decide_outcome, first_of_each_batch
from services.tracker.tests.support import make_results

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def totals(failed: int, audience: int = 100, done: int = 4) -> CampaignTotals:
    return CampaignTotals(audience, 4, done, 0, audience - failed, failed, 0, 0, 0)


def event(kind: DeliveryEventType, minute: int = 0, **detail: str) -> DeliveryEvent:
    return DeliveryEvent(
        event_id=str(uuid.uuid4()),
        email="a@b.c",
        event=kind,
        provider="sendgrid",
        occurred_at=T0 + timedelta(minutes=minute),
        detail=detail,
    )


@pytest.mark.parametrize(
    ("failed", "outcome"), [(0, "completed"), (20, "completed"), (21, "failed"), (100, "failed")]
)
def test_a_campaign_fails_only_past_the_threshold(failed: int, outcome: str) -> None:
    assert decide_outcome(totals(failed), 0.2) == outcome


def test_an_empty_audience_completes_and_accounting_needs_every_batch() -> None:
    assert decide_outcome(totals(0, audience=0), 0.2) == "completed"
    assert not totals(0, done=3).accounted and totals(0, done=4).accounted


def test_only_the_first_copy_of_a_batch_counts() -> None:
    a, b = make_results(uuid.uuid4(), 2, 3)
    kept, dropped = first_of_each_batch([a, b, a.model_copy(update={"replayed": True}), b])
    assert [r.batch_id for r in kept] == [a.batch_id, b.batch_id] and not kept[0].replayed
    assert dropped == 2


def test_unique_counters_count_a_recipient_once() -> None:
    activity = RecipientActivity()
    added = [
        apply_event(activity, event(k, m))
        for k, m in [
            ("open", 3),
            ("open", 1),
            ("click", 4),
            ("delivered", 0),
            ("delivered", 2),
            ("deferred", 0),
            ("deferred", 0),
        ]
    ]
    assert added == [
        {"opens": 1, "unique_opens": 1},
        {"opens": 1},
        {"clicks": 1, "unique_clicks": 1},
        {"delivered": 1},
        {},
        {"deferred": 1},
        {},
    ]
    assert (activity.open_count, activity.opened_at, activity.deferred_count) == (
        2,
        T0 + timedelta(minutes=3),
        2,
    )
    assert (activity.last_event, activity.last_event_at) == ("click", T0 + timedelta(minutes=4))


def test_hard_bounces_spam_reports_and_unsubscribes_suppress() -> None:
    assert suppression_reason(event("bounce", type="bounce")) == "bounce"
    assert suppression_reason(event("bounce")) == "bounce"
    assert suppression_reason(event("bounce", type="blocked")) is None
    assert suppression_reason(event("spamreport")) == "spamreport"
    assert suppression_reason(event("group_unsubscribe")) == "unsubscribe"
    assert suppression_reason(event("dropped")) is None
    assert suppression_reason(event("deferred")) is None


def test_sendgrid_message_ids_match_with_and_without_their_filter_suffix() -> None:
    assert message_id_candidates("abc.filter0001.123.0") == ["abc.filter0001.123.0", "abc"]
    assert message_id_candidates("abc") == ["abc"]


@pytest.mark.parametrize(
    ("share", "colour"),
    [(None, None), (0.99, "green"), (0.95, "yellow"), (0.8, "yellow"), (0.79, "red")],
)
def test_health_colours(share: float | None, colour: str | None) -> None:
    assert health(share) == colour


def test_without_provider_events_health_follows_what_was_sent() -> None:
    stats = {"audience_total": 110, "suppressed": 10, "sent": 97, "failed": 3}
    report = campaign_report(stats)
    assert (report["delivery_rate"], report["health"], report["pending"]) == (0.97, "green", 0)
    assert campaign_report({})["health"] is None
