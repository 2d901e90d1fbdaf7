"""A campaign's delivery stats as the API shows them, from the tracker's counters. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

TERMINAL = ("sent", "failed", "suppressed", "invalid", "unknown", "cancelled")


@dataclass(frozen=True)
class CampaignStats:
    total: int
    sent: int
    failed: int
    suppressed: int
    invalid: int
    unknown: int
    cancelled: int
    pending: int
    delivery_rate: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def campaign_stats(counters: Mapping[str, Any] | None, list_size: int) -> CampaignStats:
    """`counters` is the tracker's campaign_stats row, None until the campaign is planned.

    Before planning the audience is the list as it is now; after, the planned audience.
    """
    counts = {name: int(counters[name]) if counters else 0 for name in TERMINAL}
    total = int(counters["audience_total"]) if counters else list_size
    pending = max(0, total - sum(counts.values()))
    deliverable = total - counts["suppressed"]
    rate = round(counts["sent"] / deliverable, 4) if deliverable > 0 else 0.0
    return CampaignStats(total=total, pending=pending, delivery_rate=rate, **counts)
