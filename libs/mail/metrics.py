"""The providers' Prometheus metrics (labels: provider and reason names only)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

# The reasons a provider request is retried (the `reason` label of PROVIDER_RETRIES).
RETRY_REASONS = ("throttled", "server_error", "timeout", "connection")


def start_provider_series(provider: str) -> None:
    """Create the provider's labelled series at 0, so that alerts built on rate() or
    increase() see their first increase (Prometheus's advice for known label values)."""
    for reason in RETRY_REASONS:
        PROVIDER_RETRIES.labels(provider, reason)
    PROVIDER_THROTTLED.labels(provider)


BREAKER_OPEN = Gauge(
    "mailfleet_provider_circuit_open",
    "1 while a provider's circuit breaker is open (new batches go to the fallback).",
    ["provider"],
)
