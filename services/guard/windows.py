"""Hopping windows over what providers tell us, per campaign and per domain group (pure).

No Kafka, no database, no clock of its own: every call gets `now` (seconds), so tests drive
time by hand and the service passes the wall clock.

A window of `size` seconds hops every `hop` seconds: counts land in buckets of `hop`
seconds, and the window at `now` is the bucket of `now` and the buckets before it, back to
`size` seconds (5 minutes hopping every 30 s: 10 buckets). A bucket leaves the window as a
whole when the window hops past it.

Records are counted once: each has an id (a batch id for `delivery.result`, an event id
for `delivery.event`) remembered as long as its bucket is in the window, so a record read
again (a redelivered partition, the overlap of a rebuild from PostgreSQL and the topic)
adds nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from uuid import UUID

# Domain groups as the dispatcher's per-domain throttles define them: one classifier.
from libs.mail.throttles import GROUPS


@dataclass
class Counts:
    """What one window (or one record) holds for a campaign or a domain group."""

    sends: int = 0  # recipients a provider was asked to take (sent, failed, unknown)
    accepted: int = 0  # ... and took (`sent`)
    hard_bounces: int = 0  # send-time 5xx on the address, and `bounce` events of type bounce
    other_bounces: int = 0  # `blocked` and soft bounce events (not delivered, not hard)
    complaints: int = 0  # `spamreport` events
    deferrals: int = 0  # `deferred` events
    provider_errors: int = 0  # failed for another reason than a hard bounce, or unknown
    # The part of `hard_bounces` refused at send time: `failed`, never accepted, so
    # `delivered` must not subtract it from `accepted`.
    send_time_bounces: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    @property
    def delivered(self) -> int:
        """Accepted and not bounced back. The same for every provider (SMTP and the sink
        send no `delivered` events); SendGrid's `delivered` would count the same mail."""
        event_bounces = self.hard_bounces - self.send_time_bounces
        return max(self.accepted - max(event_bounces, 0) - self.other_bounces, 0)

    def rates(self) -> dict[str, float | None]:
        """Each rate, or None while its denominator is 0."""
        return {
            "hard_bounce_rate": _ratio(self.hard_bounces, self.sends),
            "complaint_rate": _ratio(self.complaints, self.delivered),
            "deferral_rate": _ratio(self.deferrals, self.sends),
            "provider_error_rate": _ratio(self.provider_errors, self.sends),
        }


RATES = ("hard_bounce_rate", "complaint_rate", "deferral_rate", "provider_error_rate")


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


HARD_BOUNCE_PREFIX = "hard bounce: "


def outcome_counts(status: str, error: str | None) -> Counts:
    """One recipient's outcome in a `delivery.result`."""
    if status == "sent":
        return Counts(sends=1, accepted=1)
    if status == "failed":
        if error is not None and error.startswith(HARD_BOUNCE_PREFIX):
            return Counts(sends=1, hard_bounces=1, send_time_bounces=1)
        return Counts(sends=1, provider_errors=1)
    if status == "unknown":
        return Counts(sends=1, provider_errors=1)
    return Counts()  # suppressed, invalid, cancelled: never offered to a provider


def event_counts(event: str, detail: Mapping[str, object]) -> Counts:
    """One `delivery.event`. A bounce's `type` (SendGrid's field, and the bounce mailbox's)
    tells a hard bounce (`bounce`, the default) from `blocked` and `soft`."""
    if event == "bounce":
        kind = detail.get("type") or detail.get("bounce_type") or "bounce"
        return Counts(hard_bounces=1) if kind == "bounce" else Counts(other_bounces=1)
    if event == "spamreport":
        return Counts(complaints=1)
    if event == "deferred":
        return Counts(deferrals=1)
    return Counts()  # delivered, opens, clicks, unsubscribes: not what the guard watches


Key = tuple[UUID, str]  # (campaign id, domain group)


class HoppingWindows:
    def __init__(self, size_s: float, hop_s: float) -> None:
        if hop_s <= 0 or size_s < hop_s:
            raise ValueError("the window must be at least one hop long, and the hop positive")
        self.size_s = size_s
        self.hop_s = hop_s
        self.buckets_per_window = max(1, math.ceil(size_s / hop_s))
        # bucket -> campaign -> domain group -> counts
        self._buckets: dict[int, dict[UUID, dict[str, Counts]]] = {}
        self._seen: dict[str, int] = {}  # record id -> its bucket

    def _bucket(self, at: float) -> int:
        return math.floor(at / self.hop_s)

    def _oldest(self, now: float) -> int:
        return self._bucket(now) - self.buckets_per_window + 1

    def add(self, record_id: str, at: float, now: float, counts: Mapping[Key, Counts]) -> bool:
        """Count one record learned at `at` (clamped to `now`). False when it was counted
        already, or when it is older than the window (nothing to add then)."""
        bucket = self._bucket(min(at, now))
        if bucket < self._oldest(now) or record_id in self._seen:
            return False
        self._seen[record_id] = bucket
        into = self._buckets.setdefault(bucket, {})
        for (campaign, group), value in counts.items():
            if not value.is_empty():
                into.setdefault(campaign, {}).setdefault(group, Counts()).add(value)
        return True

    def expire(self, now: float) -> None:
        """Forget the buckets (and record ids) the window has hopped past."""
        oldest = self._oldest(now)
        for bucket in [b for b in self._buckets if b < oldest]:
            del self._buckets[bucket]
        for record_id in [r for r, b in self._seen.items() if b < oldest]:
            del self._seen[record_id]

    def _in_window(self, now: float) -> Iterable[dict[UUID, dict[str, Counts]]]:
        oldest, newest = self._oldest(now), self._bucket(now)
        return (campaigns for b, campaigns in self._buckets.items() if oldest <= b <= newest)

    def campaigns(self, now: float) -> set[UUID]:
        return {campaign for campaigns in self._in_window(now) for campaign in campaigns}

    def campaign(self, campaign_id: UUID, now: float) -> Counts:
        total = Counts()
        for campaigns in self._in_window(now):
            for value in campaigns.get(campaign_id, {}).values():
                total.add(value)
        return total

    def by_group(self, now: float, campaign_id: UUID | None = None) -> dict[str, Counts]:
        """Each domain group's counts, over every campaign or over one."""
        totals = {group: Counts() for group in GROUPS}
        for campaigns in self._in_window(now):
            chosen = campaigns.values() if campaign_id is None else [campaigns.get(campaign_id, {})]
            for groups in chosen:
                for group, value in groups.items():
                    totals[group].add(value)
        return totals

    @property
    def records(self) -> int:
        return len(self._seen)
