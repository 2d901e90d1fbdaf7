"""The webhooks service's Prometheus metrics. Labels are bounded (no endpoint ids: an
admin can make any number; the delivery log and the API name the endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from libs.webhooks.events import EVENT_TYPES

ENQUEUED = Counter(
    "mailfleet_webhook_deliveries_enqueued_total",
    "Events read that have a webhook type (each becomes one outbox row per subscribed"
    " endpoint; a redelivered event is counted again but adds no row), by event type.",
    ["event_type"],
)
ATTEMPTS = Counter(
    "mailfleet_webhook_attempts_total",
    "Delivery attempts, by outcome: delivered, retry (failed, tried again later), "
    "gave_up (failed past the retry window), refused (target not allowed).",
    ["outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "mailfleet_webhook_attempt_seconds",
    "Duration of one delivery attempt (connect, TLS, request, response).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ENDPOINTS_DISABLED = Counter(
    "mailfleet_webhook_endpoints_disabled_total",
    "Endpoints disabled by the sender after a streak of failed attempts.",
)
DISABLED_FAILING = Gauge(
    "mailfleet_webhook_endpoints_disabled_failing",
    "Endpoints currently disabled because they kept failing (an admin must re-enable).",
)
EXPIRED = Counter(
    "mailfleet_webhook_deliveries_expired_total",
    "Pending deliveries given up because their endpoint stayed disabled past the retry window.",
)
PENDING = Gauge("mailfleet_webhook_pending", "Deliveries waiting in the outbox.")


def start_series() -> None:
    for outcome in ("delivered", "retry", "gave_up", "refused"):
        ATTEMPTS.labels(outcome)
    for kind in EVENT_TYPES:
        ENQUEUED.labels(kind)
