"""Soft bounces in a row (pure): what a batch of events does to each address's run."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.common.events import DeliveryEvent, DeliveryEventType
from services.tracker.activity import soft_bounce_streaks, suppression_reason

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def event(n: int, kind: DeliveryEventType, email: str, bounce: str | None = None) -> DeliveryEvent:
    return DeliveryEvent(
        event_id=f"e{n}",
        email=email,
        event=kind,
        provider="smtp",
        occurred_at=T0,
        detail={"type": bounce} if bounce else {},
    )


def test_a_delivery_ends_the_run_and_only_soft_bounces_count() -> None:
    events = [
        event(1, "bounce", "A@x.io", "soft"),
        event(2, "bounce", "a@x.io", "soft"),
        event(3, "bounce", "b@x.io", "soft"),
        event(4, "open", "b@x.io"),
        event(5, "bounce", "b@x.io", "soft"),
        event(6, "delivered", "c@x.io"),
        event(7, "bounce", "d@x.io", "blocked"),
        event(8, "deferred", "d@x.io"),
    ]
    assert soft_bounce_streaks(events) == {
        "a@x.io": (False, 2),  # added to whatever run it had
        "b@x.io": (True, 1),  # ended by the open, then one more
        "c@x.io": (True, 0),
    }


def test_a_soft_bounce_alone_never_suppresses() -> None:
    assert suppression_reason(event(1, "bounce", "a@x.io", "soft")) is None
    assert suppression_reason(event(2, "bounce", "a@x.io", "bounce")) == "bounce"
