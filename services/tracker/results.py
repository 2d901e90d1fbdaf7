"""Folding `delivery.result` batches: what counts, what each batch adds, how a campaign ends.

Pure: no database, no Kafka. The store applies these decisions inside one transaction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from libs.common.events import DeliveryResult
from libs.mail.bounces import is_hard_bounce_error

# Provider error texts can be long; the delivery log keeps enough to explain the failure.
MAX_ERROR_CHARS = 1000

Outcome = Literal["completed", "failed"]

# One row of the `deliveries` COPY, in `DELIVERY_COLUMNS` order.
DeliveryRow = tuple[UUID, int, str, str, str | None, str | None, str | None, str, datetime]
DELIVERY_COLUMNS: tuple[str, ...] = (
    "campaign_id",
    "recipient_id",
    "email",
    "status",
    "message_id",
    "error",
    "variant",
    "batch_id",
    "sent_at",
)


def first_of_each_batch(results: list[DeliveryResult]) -> tuple[list[DeliveryResult], int]:
    """Keep the first copy of every batch (redeliveries and replays change nothing).

    Returns the kept results in arrival order and how many copies were dropped.
    """
    seen: set[str] = set()
    kept: list[DeliveryResult] = []
    for result in results:
        if result.batch_id not in seen:
            seen.add(result.batch_id)
            kept.append(result)
    return kept, len(results) - len(kept)


def status_counts(result: DeliveryResult) -> Counter[str]:
    return Counter(outcome.status for outcome in result.outcomes)


def delivery_rows(result: DeliveryResult) -> list[DeliveryRow]:
    """The batch's recipients as rows of the delivery log."""
    return [
        (
            result.campaign_id,
            o.recipient_id,
            _clean(o.email),
            o.status,
            _clean(o.message_id) if o.message_id is not None else None,
            _clean(o.error)[:MAX_ERROR_CHARS] if o.error is not None else None,
            result.variant,
            result.batch_id,
            result.finished_at,
        )
        for o in result.outcomes
    ]


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a provider's garbage must not block the partition.
    return text.replace("\x00", "")


@dataclass(frozen=True)
class CampaignTotals:
    """A campaign's counters after a fold (a campaign_stats row)."""

    audience_total: int
    batches_total: int
    batches_done: int
    suppressed: int
    sent: int
    failed: int
    invalid: int
    unknown: int
    cancelled: int

    @property
    def accounted(self) -> bool:
        """Every batch of the plan has come back, so every recipient has a terminal state."""
        return self.batches_done >= self.batches_total

    def counts(self) -> dict[str, int]:
        return {
            "total": self.audience_total,
            "sent": self.sent,
            "failed": self.failed,
            "suppressed": self.suppressed,
            "invalid": self.invalid,
            "unknown": self.unknown,
            "cancelled": self.cancelled,
        }


def decide_outcome(totals: CampaignTotals, failure_threshold: float) -> Outcome:
    """`failed` when more than the threshold's share of the audience failed."""
    if totals.audience_total <= 0:
        return "completed"
    failed_share = totals.failed / totals.audience_total
    return "failed" if failed_share > failure_threshold else "completed"


def send_time_bounces(results: list[DeliveryResult]) -> dict[str, tuple[str, str]]:
    """Addresses the provider refused as dead when sending (an SMTP 550 5.1.1 at RCPT):
    lower-cased address -> (suppression reason, source)."""
    return {
        o.email.strip().lower(): ("bounce", f"{r.provider}:send")
        for r in results
        for o in r.outcomes
        if o.status == "failed" and is_hard_bounce_error(o.error)
    }
