"""The campaign_stats counters: one list shared by the tracker (which moves them) and the
read models (which show them)."""

from __future__ import annotations

# Every status a dispatcher reports for a recipient; each has a campaign_stats counter.
OUTCOME_STATUSES: tuple[str, ...] = ("sent", "failed", "invalid", "unknown", "cancelled")

# campaign_stats columns that provider events move.
ACTIVITY_COUNTERS: tuple[str, ...] = (
    "delivered",
    "bounced",
    "dropped",
    "deferred",
    "opens",
    "unique_opens",
    "clicks",
    "unique_clicks",
    "spam_reports",
    "unsubscribes",
    # Opens and clicks of machines (Apple's privacy proxy, link scanners): in the totals
    # above, never in the unique counters.
    "machine_opens",
    "machine_clicks",
)
