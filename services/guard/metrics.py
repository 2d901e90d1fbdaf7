"""The guard's Prometheus metrics. Labels are bounded: rates and domain groups, no ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from libs.mail.throttles import GROUPS
from services.guard.windows import RATES

PAUSES = Counter(
    "mailfleet_guard_pauses_total",
    "Campaign pauses the guard asked for on campaign.control, by the rate that crossed.",
    ["rate"],
)
RATE = Gauge(
    "mailfleet_guard_rate",
    "Each rate over the current window, all campaigns together, by recipient domain group"
    " (NaN while its denominator is 0).",
    ["group", "rate"],
)
CAMPAIGNS_WATCHED = Gauge(
    "mailfleet_guard_campaigns_watched", "Campaigns with records in the current window."
)
RECORDS_COUNTED = Counter(
    "mailfleet_guard_records_total",
    "delivery.result and delivery.event records counted into the windows, by topic"
    " (records already counted, or older than the window, are not).",
    ["topic"],
)
HELD_OFF = Counter(
    "mailfleet_guard_held_off_total",
    "Pauses not asked for because an admin resumed the campaign within the hold-off.",
)
LAST_TICK = Gauge(
    "mailfleet_guard_last_tick_timestamp_seconds",
    "When the guard last looked at every campaign in its window (once a hop).",
)
REBUILT_RECORDS = Gauge(
    "mailfleet_guard_rebuilt_records",
    "Records read back from PostgreSQL into the windows at the guard's last start.",
)


def start_series() -> None:
    for rate in RATES:
        PAUSES.labels(rate)
        for group in GROUPS:
            RATE.labels(group, rate).set(float("nan"))
    for topic in ("delivery.result", "delivery.event"):
        RECORDS_COUNTED.labels(topic)
