"""A campaign's stats as admins read them, derived from its counters. Pure.

Rates are shares in [0, 1] rounded to 4 places; None where nothing is known yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from libs.stats.counters import ACTIVITY_COUNTERS, OUTCOME_STATUSES

Health = Literal["green", "yellow", "red"]

# The seed's admin colours: green above 95 % delivered, yellow 80–95 %, red below 80 %.
GREEN_ABOVE = 0.95
YELLOW_FROM = 0.80

# The recipient outcomes, the planned suppressions, then what provider events move.
_COUNTERS = (*OUTCOME_STATUSES, "suppressed", *ACTIVITY_COUNTERS)


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def health(delivered_share: float | None) -> Health | None:
    if delivered_share is None:
        return None
    if delivered_share > GREEN_ABOVE:
        return "green"
    return "yellow" if delivered_share >= YELLOW_FROM else "red"


def campaign_report(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the stats API shows, from a `campaign_stats` row.

    Until the provider reports deliveries (the sink never does), a recipient the provider
    accepted counts as delivered for the delivery rate and health; once it reports, the
    share is delivered / (delivered + bounced + dropped + failed + invalid) over the
    recipients whose fate is known, so a campaign still waiting for webhooks is not red.
    """
    c = {name: int(stats.get(name) or 0) for name in _COUNTERS}
    total = int(stats.get("audience_total") or 0)
    done = c["sent"] + c["failed"] + c["invalid"] + c["unknown"] + c["cancelled"]
    pending = max(0, total - c["suppressed"] - done)
    provider_reported = c["delivered"] + c["bounced"] + c["dropped"] > 0
    if provider_reported:
        known = c["delivered"] + c["bounced"] + c["dropped"] + c["failed"] + c["invalid"]
        delivered_share = share(c["delivered"], known)
    else:
        delivered_share = share(c["sent"], c["sent"] + c["failed"] + c["invalid"] + c["unknown"])
    started: datetime | None = stats.get("send_started_at")
    ended: datetime | None = stats.get("send_finished_at")
    duration = (ended - started).total_seconds() if started and ended else None
    return {
        "total": total,
        **{name: c[name] for name in ("sent", "failed", "suppressed", "invalid")},
        "unknown": c["unknown"],
        "cancelled": c["cancelled"],
        "pending": pending,
        "delivery_rate": share(c["sent"], total - c["suppressed"]) or 0.0,
        "delivered": c["delivered"],
        "bounced": c["bounced"],
        "dropped": c["dropped"],
        "deferred": c["deferred"],
        "opened": c["unique_opens"],
        "opens": c["opens"],
        "clicked": c["unique_clicks"],
        "clicks": c["clicks"],
        "machine_opens": c["machine_opens"],
        "machine_clicks": c["machine_clicks"],
        "unsubscribed": c["unsubscribes"],
        "spam_reports": c["spam_reports"],
        "delivered_rate": delivered_share,
        "unique_open_rate": share(c["unique_opens"], c["delivered"] or c["sent"]),
        "unique_click_rate": share(c["unique_clicks"], c["delivered"] or c["sent"]),
        "health": health(delivered_share),
        "batches_total": int(stats.get("batches_total") or 0),
        "batches_done": int(stats.get("batches_done") or 0),
        "outcome": stats.get("outcome"),
        "started_at": started,
        "finished_at": ended,
        "duration_seconds": round(duration, 3) if duration is not None else None,
        "emails_per_second": round(c["sent"] / duration, 1) if duration else None,
    }
