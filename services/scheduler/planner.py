"""What the scheduler decides, without I/O: when a schedule wins, and how to cut batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


def batch_id(campaign_id: UUID, batch_no: int) -> str:
    """Stable across re-emits: the dispatcher's ledger and the tracker dedupe on it."""
    return f"{campaign_id}:{batch_no}"


def batches_needed(sendable: int, batch_size: int) -> int:
    return -(-sendable // batch_size) if sendable > 0 else 0


@dataclass(frozen=True)
class PlanSummary:
    campaign_id: UUID
    content_id: UUID
    provider: str
    audience_total: int
    suppressed_total: int
    batches_total: int

    @property
    def sendable(self) -> int:
        return self.audience_total - self.suppressed_total


@dataclass(frozen=True)
class ScheduleRequest:
    campaign_id: UUID
    send_at: datetime
    timezone: str
    revision: int
