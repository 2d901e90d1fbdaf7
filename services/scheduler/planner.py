"""What the scheduler decides, without I/O: when a schedule wins, and how to cut batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


def batch_id(campaign_id: UUID, batch_no: int) -> str:
    """Stable across re-emits: the dispatcher's ledger and the tracker dedupe on it."""
    return f"{campaign_id}:{batch_no}"


def batches_needed(sendable: int, batch_size: int) -> int:
    return -(-sendable // batch_size) if sendable > 0 else 0


# Room in a `batch.ready` record for everything but its recipients: the event's other
# fields, its key, and the record's own framing.
ENVELOPE_BYTES = 4096
# One recipient in the event, beyond its address and fields: id, keys, quotes, commas.
RECIPIENT_OVERHEAD_BYTES = 64
_MIN_CHUNK_BYTES = 4096


def recipient_bytes_budget(max_message_bytes: int) -> int:
    """Bytes the recipients of one batch may take in its `batch.ready` event."""
    return max_message_bytes - ENVELOPE_BYTES


def byte_chunk(budget: int, largest_recipient: int) -> int:
    """The byte width of the windows recipients are cut into, by the running sum of their
    sizes: a window holds the recipients that start in it, so it may run over by one
    recipient, at most the largest. Cutting at `budget - largest` keeps every batch under
    `budget`, unless one recipient alone nearly fills it (that batch is set aside at emit).
    """
    return max(budget - largest_recipient, _MIN_CHUNK_BYTES)


def cut_by_count(batch_size: int, largest_recipient: int, budget: int) -> bool:
    """Whether a full batch of the largest recipients fits `budget`: then every batch cut by
    count alone does, and the plan needs no running sum of sizes (the common case: it cuts
    a sorted array in slices instead of three window passes over the audience)."""
    return batch_size * largest_recipient <= budget


@dataclass(frozen=True)
class PlanSummary:
    campaign_id: UUID
    content_id: UUID
    provider: str
    audience_total: int
    suppressed_total: int
    batches_total: int
    # Recipients whose `timezone` field named no zone: planned in the fallback zone.
    invalid_timezones: int = 0

    @property
    def sendable(self) -> int:
        return self.audience_total - self.suppressed_total


@dataclass(frozen=True)
class ScheduleRequest:
    campaign_id: UUID
    send_at: datetime
    timezone: str
    revision: int
    local_time: bool = False
    local_send_at: datetime | None = None  # naive wall time, with local_time
    send_window: dict[str, Any] | None = None
