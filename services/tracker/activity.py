"""Folding provider events (`delivery.event`) into a recipient's activity. Pure.

A recipient's activity records the first time each thing happened; a campaign's counters
count those first times (unique per recipient) plus the totals of opens and clicks, so the
counters always equal a recount of the delivery log.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from libs.common.events import DeliveryEvent

# The suppression list's reasons (see the `suppressions` table).
SUPPRESSING_EVENTS: dict[str, str] = {
    "spamreport": "spamreport",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}


@dataclass
class RecipientActivity:
    """The provider-event columns of one `deliveries` row."""

    delivered_at: datetime | None = None
    bounced_at: datetime | None = None
    bounce_type: str | None = None
    dropped_at: datetime | None = None
    deferred_count: int = 0
    opened_at: datetime | None = None
    open_count: int = 0
    clicked_at: datetime | None = None
    click_count: int = 0
    unsubscribed_at: datetime | None = None
    spam_reported_at: datetime | None = None
    last_event: str | None = None
    last_event_at: datetime | None = None

    @classmethod
    def column_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_row(cls, row: Any) -> RecipientActivity:
        return cls(**{name: row[name] for name in cls.column_names()})

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.column_names())


def apply_event(activity: RecipientActivity, event: DeliveryEvent) -> Counter[str]:
    """Record `event` in `activity`; returns what it adds to the campaign's counters."""
    at = event.occurred_at
    added: Counter[str] = Counter()
    kind = event.event
    if kind == "delivered" and activity.delivered_at is None:
        activity.delivered_at = at
        added["delivered"] += 1
    elif kind == "bounce" and activity.bounced_at is None:
        activity.bounced_at = at
        activity.bounce_type = bounce_type(event)
        added["bounced"] += 1
    elif kind == "dropped" and activity.dropped_at is None:
        activity.dropped_at = at
        added["dropped"] += 1
    elif kind == "deferred":
        activity.deferred_count += 1
        # A recipient counts once as deferred however often the provider retried.
        added["deferred"] += 1 if activity.deferred_count == 1 else 0
    elif kind == "open":
        activity.open_count += 1
        added["opens"] += 1
        if is_machine(event):
            added["machine_opens"] += 1
        elif activity.opened_at is None:
            activity.opened_at = at
            added["unique_opens"] += 1
    elif kind == "click":
        activity.click_count += 1
        added["clicks"] += 1
        if is_machine(event):
            added["machine_clicks"] += 1
        elif activity.clicked_at is None:
            activity.clicked_at = at
            added["unique_clicks"] += 1
    elif kind == "spamreport" and activity.spam_reported_at is None:
        activity.spam_reported_at = at
        added["spam_reports"] += 1
    elif kind in ("unsubscribe", "group_unsubscribe") and activity.unsubscribed_at is None:
        activity.unsubscribed_at = at
        added["unsubscribes"] += 1
    if activity.last_event_at is None or at >= activity.last_event_at:
        activity.last_event, activity.last_event_at = kind, at
    return +added


def is_machine(event: DeliveryEvent) -> bool:
    """An open or click that no person made: flagged by the edge (`machine`, with a
    `machine_reason`) or by SendGrid (`sg_machine_open`, Apple's privacy proxy). Counted in
    the totals, never as the recipient's first open or click (the unique counters)."""
    return event.detail.get("machine") is True or event.detail.get("sg_machine_open") is True


def bounce_type(event: DeliveryEvent) -> str:
    """SendGrid's bounce `type`: `bounce` (hard: the address does not exist) or `blocked`;
    a DSN read from the bounce mailbox may also say `soft` (a 4.x.x the MTA gave up on),
    which suppresses only after MAILFLEET_SOFT_BOUNCE_LIMIT in a row."""
    value = event.detail.get("type") or event.detail.get("bounce_type") or "bounce"
    return str(value)[:40]


def suppression_reason(event: DeliveryEvent) -> str | None:
    """Why the event's address must never be mailed again, or None.

    Hard bounces, spam reports and unsubscribes suppress; a `blocked` bounce (the receiving
    server refused this message, the address may be fine) and `dropped` do not.
    """
    if event.event == "bounce":
        return "bounce" if bounce_type(event) == "bounce" else None
    return SUPPRESSING_EVENTS.get(event.event)


# Events that show the address takes mail: they end a run of soft bounces.
_STREAK_ENDERS = frozenset({"delivered", "open", "click"})


def soft_bounce_streaks(events: list[DeliveryEvent]) -> dict[str, tuple[bool, int]]:
    """What `events` (in order) do to each address's run of soft bounces: lower-cased
    address -> (whether the run was ended first, soft bounces counted after that)."""
    changes: dict[str, tuple[bool, int]] = {}
    for event in events:
        change = _streak_change(event)
        if change is None:
            continue
        email = event.email.strip().lower()
        ended, count = changes.get(email, (False, 0))
        changes[email] = (True, 0) if change == "end" else (ended, count + 1)
    return changes


def _streak_change(event: DeliveryEvent) -> Literal["soft", "end"] | None:
    if event.event == "bounce" and bounce_type(event) == "soft":
        return "soft"
    return "end" if event.event in _STREAK_ENDERS else None


def message_id_candidates(provider_message_id: str) -> list[str]:
    """Ids under which the dispatcher may have logged the message.

    SendGrid reports `sg_message_id` as the send's X-Message-Id plus a `.filter...` suffix.
    """
    candidates = [provider_message_id]
    head = provider_message_id.split(".", 1)[0]
    if head and head != provider_message_id:
        candidates.append(head)
    return candidates
