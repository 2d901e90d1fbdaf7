"""The dispatcher's Prometheus metrics (labels: provider and outcome names only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EMAILS = Counter(
    "mailfleet_dispatcher_emails_total",
    "Recipients handled, by provider and outcome (sent, failed, invalid, unknown, cancelled).",
    ["provider", "outcome"],
)
BATCHES = Counter(
    "mailfleet_dispatcher_batches_total",
    "Batches handled: sent, replayed from the ledger, unknown outcome, handed back (paused)"
    " or cancelled.",
    ["provider", "mode"],
)
PROVIDER_REQUEST_SECONDS = Histogram(
    "mailfleet_provider_request_seconds",
    "Latency of one provider request (one HTTP call or one SMTP message).",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_RETRIES = Counter(
    "mailfleet_provider_retries_total",
    "Provider requests retried, by reason (throttled, server_error, timeout, connection).",
    ["provider", "reason"],
)
PROVIDER_THROTTLED = Counter(
    "mailfleet_provider_throttled_total", "429 answers from a provider.", ["provider"]
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
BREAKER_OPEN = Gauge(
    "mailfleet_provider_circuit_open",
    "1 while a provider's circuit breaker is open (new batches go to the fallback).",
    ["provider"],
)
RATE_LIMIT_WAIT = Counter(
    "mailfleet_dispatcher_rate_limit_wait_seconds_total",
    "Seconds batches waited for the sending rate limit before being sent.",
    ["provider"],
)
