"""The tracker's Prometheus metrics. Labels are bounded: statuses, event kinds, outcomes."""

from __future__ import annotations

from typing import get_args

from prometheus_client import Counter, Histogram

from libs.common.events import DeliveryEventType, Topic

RECIPIENTS_FOLDED = Counter(
    "mailfleet_tracker_recipients_folded_total",
    "Recipient outcomes written to the delivery log, by status.",
    ["status"],
)
BATCHES_FOLDED = Counter(
    "mailfleet_tracker_batches_folded_total", "delivery.result batches folded for the first time."
)
DUPLICATE_BATCHES = Counter(
    "mailfleet_tracker_duplicate_batches_total",
    "delivery.result batches ignored because they were already folded.",
)
CONFLICTING_RECIPIENTS = Counter(
    "mailfleet_tracker_conflicting_recipients_total",
    "Outcomes ignored because the recipient already had one in another batch.",
)
REJECTED_EVENTS = Counter(
    "mailfleet_tracker_rejected_events_total",
    "Valid events whose data the database refused, sent to the dead-letter topic.",
    ["topic"],
)
FOLD_SECONDS = Histogram(
    "mailfleet_tracker_fold_seconds",
    "Time to fold one partition's events in one transaction.",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RESULT_LAG_SECONDS = Histogram(
    "mailfleet_tracker_result_lag_seconds",
    "From a batch's end at the dispatcher to its fold in PostgreSQL.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CAMPAIGNS_FINISHED = Counter(
    "mailfleet_tracker_campaigns_finished_total",
    "Campaigns the tracker gave their final status.",
    ["outcome"],
)
DELIVERY_EVENTS = Counter(
    "mailfleet_tracker_delivery_events_total",
    "Provider events folded for the first time, by kind.",
    ["event"],
)
DUPLICATE_EVENTS = Counter(
    "mailfleet_tracker_duplicate_delivery_events_total",
    "Provider events ignored because their event id was already folded.",
)
UNMATCHED_EVENTS = Counter(
    "mailfleet_tracker_unmatched_delivery_events_total",
    "Provider events for messages the delivery log does not know.",
)


def start_series() -> None:
    """The labelled counters' known series at 0 from the start, so that rate() and
    increase() see their first increase."""
    for kind in get_args(DeliveryEventType):
        DELIVERY_EVENTS.labels(kind)
    for topic in (Topic.DELIVERY_RESULT, Topic.DELIVERY_EVENT):
        REJECTED_EVENTS.labels(topic.value)


SUPPRESSIONS_ADDED = Counter(
    "mailfleet_tracker_suppressions_added_total",
    "Addresses added to the suppression list, by reason.",
    ["reason"],
)
