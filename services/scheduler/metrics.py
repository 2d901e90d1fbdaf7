from prometheus_client import Counter

CAMPAIGNS_CLAIMED = Counter(
    "mailfleet_scheduler_campaigns_started_total", "Campaigns claimed and planned."
)
BATCHES_EMITTED = Counter(
    "mailfleet_scheduler_batches_emitted_total", "batch.ready events published (re-emits too)."
)
SCHEDULES_UNKNOWN = Counter(
    "mailfleet_scheduler_unknown_campaign_schedules_total",
    "campaign.scheduled events naming a campaign that does not exist.",
)
BATCHES_SET_ASIDE = Counter(
    "mailfleet_scheduler_batches_set_aside_total",
    "Batches whose batch.ready could not be published (over max.message.bytes): their "
    "recipients are reported failed with the reason.",
)
BATCHES_WINDOW_DEFERRED = Counter(
    "mailfleet_scheduler_batches_window_deferred_total",
    "Due batches held because their campaign's send window was closed in their zone "
    "(their due time moved to the next opening).",
)
INVALID_TIMEZONES = Counter(
    "mailfleet_scheduler_invalid_timezones_total",
    "Recipients planned in a fallback zone because their `timezone` field named no zone.",
)
AB_WINNERS = Counter(
    "mailfleet_scheduler_ab_winners_total",
    "A/B test winners chosen by the scheduler after the wait (an admin's picks are audited).",
)
