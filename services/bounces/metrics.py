"""The bounce poller's Prometheus metrics. Labels are bounded: event kinds, outcomes."""

from __future__ import annotations

from prometheus_client import Counter

MAILS_READ = Counter(
    "mailfleet_bounces_mails_total",
    "Mails read from the bounce mailbox, by outcome (report, unparsed).",
    ["outcome"],
)
EVENTS_PUBLISHED = Counter(
    "mailfleet_bounces_events_total",
    "delivery.event records published from DSN and ARF reports, by event.",
    ["event"],
)
POLL_FAILURES = Counter(
    "mailfleet_bounces_poll_failures_total", "Polls of the bounce mailbox that failed."
)


def start_series() -> None:
    for outcome in ("report", "unparsed"):
        MAILS_READ.labels(outcome)
    for event in ("bounce", "deferred", "spamreport"):
        EVENTS_PUBLISHED.labels(event)
