"""The automations service's Prometheus metrics (no automation ids as labels: an admin can
make any number; the API shows each one's stats)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ENROLLED = Counter(
    "mailfleet_automation_runs_started_total",
    "Runs started, by trigger kind (joined, import, event, anniversary).",
    ["trigger"],
)
STEPS = Counter(
    "mailfleet_automation_runs_advanced_total",
    "Due runs advanced (each by one or more steps, up to its next wait or its end).",
)
QUEUED = Counter(
    "mailfleet_automation_messages_queued_total",
    "Send steps done: message.requested rows written to the outbox (once per step).",
)
PUBLISHED = Counter(
    "mailfleet_automation_messages_published_total",
    "message.requested events published from the outbox (re-publishes after a broker loss too).",
)
REPUBLISHED = Counter(
    "mailfleet_automation_messages_republished_total",
    "Outbox rows made due again after a broker loss (the tracker had no outcome for them).",
)
STOPPED = Counter(
    "mailfleet_automation_runs_stopped_total",
    "Runs stopped early, by reason (unsubscribed: the address is suppressed; goal; left).",
    ["reason"],
)
OUTBOX_REFUSED = Counter(
    "mailfleet_automation_outbox_refused_total",
    "Outbox rows that were no valid message.requested: set aside, never published.",
)
ACTIVE = Gauge("mailfleet_automation_runs_active", "Runs in flight (waiting or due).")
DUE = Gauge(
    "mailfleet_automation_runs_due",
    "Runs of active automations whose timer has passed and that are not advanced yet.",
)
OUTBOX = Gauge("mailfleet_automation_outbox_pending", "message.requested not yet published.")
