"""The importer's Prometheus metrics (bounded labels: outcomes and statuses only)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

IMPORTS = Counter("mailfleet_imports_total", "Imports finished, by final status.", ["status"])
IMPORT_ROWS = Counter(
    "mailfleet_import_rows_total",
    "Rows of imported files by outcome: imported, updated, duplicate, suppressed, rejected.",
    ["outcome"],
)
IMPORT_SECONDS = Histogram(
    "mailfleet_import_duration_seconds",
    "Time from the list lock to the import's final state.",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
)
SUBSCRIPTIONS = Counter(
    "mailfleet_subscriptions_total",
    "Subscription events folded, by action and outcome (joined, pending, confirmation_sent,"
    " capped, refused, unchanged, replayed, confirmed, left, preferences, ignored).",
    ["action", "outcome"],
)
