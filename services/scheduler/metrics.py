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
