"""The event types an endpoint can subscribe to (shared by the API and the service)."""

from __future__ import annotations

from typing import Literal, get_args

WebhookEventType = Literal[
    "campaign.status",
    "delivery.delivered",
    "delivery.bounce",
    "delivery.complaint",
    "delivery.open",
    "delivery.click",
    "contact.unsubscribed",
    "contact.confirmed",
    "automation.step",
]
EVENT_TYPES: tuple[str, ...] = get_args(WebhookEventType)

# Accepted in subscriptions, but nothing publishes their source events yet (issue 18:
# double opt-in confirmation and automations); documented in README.
NOT_YET_PRODUCED: frozenset[str] = frozenset({"contact.confirmed", "automation.step"})
