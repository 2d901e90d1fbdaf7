"""The dispatcher's Prometheus metrics (labels: provider and outcome names only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

# The provider metrics live with the providers; re-exported for the dispatcher.
from libs.mail.metrics import (  # noqa: F401
    BREAKER_OPEN,
    PROVIDER_REQUEST_SECONDS,
    PROVIDER_RETRIES,
    PROVIDER_THROTTLED,
)

EMAILS = Counter(
    "mailfleet_dispatcher_emails_total",
    "Recipients handled, by provider and outcome (sent, failed, invalid, unknown, cancelled,"
    " suppressed).",
    ["provider", "outcome"],
)
BATCHES = Counter(
    "mailfleet_dispatcher_batches_total",
    "Batches handled: sent, replayed from the ledger, unknown outcome, handed back (paused),"
    " cancelled, send_error (the send raised; settled per recipient) or fenced (its claim"
    " was taken over: another instance's result stands).",
    ["provider", "mode"],
)
RATE_LIMIT = Gauge(
    "mailfleet_dispatcher_rate_limit",
    "This instance's current sending rate limit (emails/s; 0 = unlimited).",
    ["provider"],
)
FAILOVERS = Counter(
    "mailfleet_dispatcher_failovers_total",
    "Batches sent through the fallback provider because the campaign's provider's circuit"
    " breaker was open.",
    ["provider", "fallback"],
)


def start_failover_series(providers: list[str]) -> None:
    """Every (provider, fallback) pair at 0 from the start (see `start_provider_series`)."""
    for provider in providers:
        for fallback in providers:
            if fallback != provider:
                FAILOVERS.labels(provider, fallback)


RATE_LIMIT_WAIT = Counter(
    "mailfleet_dispatcher_rate_limit_wait_seconds_total",
    "Seconds batches waited for the sending rate limit before being sent.",
    ["provider"],
)
LEDGER_WRITES_HELD = Gauge(
    "mailfleet_dispatcher_ledger_writes_held",
    "Batch results a provider accepted that wait in memory for the database to come back.",
)
THROTTLE_WAIT = Counter(
    "mailfleet_dispatcher_throttle_wait_seconds_total",
    "Seconds claimed batches waited for room under a per-domain throttle (per domain group"
    " held back: gmail, yahoo, microsoft, other).",
    ["provider", "group"],
)
THROTTLE_WAITING = Gauge(
    "mailfleet_dispatcher_throttle_waiting_batches",
    "Batches waiting now for room under a per-domain throttle, by the domain group held back.",
    ["provider", "group"],
)
THROTTLED_BATCHES = Counter(
    "mailfleet_dispatcher_throttle_requeued_total",
    "Batches put back on batch.ready after waiting the longest one handling may for a"
    " per-domain throttle (MAILFLEET_THROTTLE_MAX_WAIT_S).",
    ["provider"],
)
CAMPAIGN_CAP_WAITS = Counter(
    "mailfleet_dispatcher_campaign_cap_waits_total",
    "Times a claimed batch waited because its campaign's own rate cap (max_per_hour) was"
    " full for the minute or the hour.",
    ["provider"],
)
MESSAGES = Counter(
    "mailfleet_dispatcher_messages_total",
    "Transactional messages handled, by outcome (sent, failed, invalid, unknown, suppressed,"
    " or refused: an idempotency key reused for another message).",
    ["outcome"],
)
