"""Prometheus metrics of the edge (its HTTP requests are counted by libs.web.middleware)."""

from __future__ import annotations

from prometheus_client import Counter

WEBHOOK_EVENTS = Counter(
    "mailfleet_webhook_events_total",
    "Provider webhook events received, by provider and outcome.",
    ["provider", "outcome"],  # outcome: published, malformed, unsupported
)
WEBHOOK_POSTS_REFUSED = Counter(
    "mailfleet_webhook_posts_refused_total",
    "Provider webhook posts refused, by provider and reason.",
    ["provider", "reason"],  # reason: signature, unsigned, too_large, not_json
)
UNSUBSCRIBES = Counter(
    "mailfleet_edge_unsubscribes_total",
    "Unsubscribe requests published to contact.event, by source (one-click, page).",
    ["source"],
)
TRACKING_HITS = Counter(
    "mailfleet_edge_tracking_hits_total",
    "Own open and click hits, by kind (open, click) and outcome (published, lost, dropped).",
    ["kind", "outcome"],
)
TRACKING_REFUSED = Counter(
    "mailfleet_edge_tracking_refused_total",
    "Tracking links refused (bad or forged token), by kind.",
    ["kind"],
)
SUBSCRIBE_POSTS = Counter(
    "mailfleet_edge_subscribe_posts_total",
    "Subscribe form posts, by outcome (published, honeypot, ip_limited, address_limited,"
    " invalid, unknown_list).",
    ["outcome"],
)
PREFERENCE_ACTIONS = Counter(
    "mailfleet_edge_preference_actions_total",
    "Preference-centre and confirmation actions published, by action.",
    ["action"],
)
