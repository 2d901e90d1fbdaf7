"""What each source event becomes on the wire. Pure: no Kafka, no HTTP, no database.

A webhook's body:

    {"id": "<uuid>", "type": "delivery.open", "occurred_at": "...", "campaign_id": "...",
     "data": {...}}

`id` is derived from the source event's own id (uuid5), so a redelivered Kafka record
becomes the same webhook event, and a receiver deduplicates on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid5

import orjson

from libs.common.events import CampaignStatus, ContactEvent, DeliveryEvent, Topic

_NAMESPACE = UUID("6f1d7a52-3c0e-4f0b-9d55-2b8c2e7a4d11")

# delivery.event kinds that have a webhook type; the others (processed, dropped, deferred)
# are not offered to subscribers.
_DELIVERY_TYPES = {
    "delivered": "delivery.delivered",
    "bounce": "delivery.bounce",
    "spamreport": "delivery.complaint",
    "open": "delivery.open",
    "click": "delivery.click",
    "unsubscribe": "contact.unsubscribed",
    "group_unsubscribe": "contact.unsubscribed",
}
# contact.event actions (the edge publishes unsubscribes today; confirmations to come).
_CONTACT_TYPES = {
    "unsubscribe": "contact.unsubscribed",
    "confirmed": "contact.confirmed",
    "confirm": "contact.confirmed",
}


@dataclass(frozen=True)
class Outgoing:
    event_id: UUID
    event_type: str
    # Events with the same key reach an endpoint in the order they were read: the campaign.
    order_key: str | None
    body: bytes


def event_id(topic: Topic, source_id: str) -> UUID:
    return uuid5(_NAMESPACE, f"{topic.value}|{source_id}")


def _body(
    ident: UUID, kind: str, occurred_at: str, campaign_id: UUID | None, data: dict[str, Any]
) -> bytes:
    document = {
        "id": str(ident),
        "type": kind,
        "occurred_at": occurred_at,
        "campaign_id": str(campaign_id) if campaign_id else None,
        "data": data,
    }
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def from_campaign_status(event: CampaignStatus) -> Outgoing:
    # A status has no id of its own: the campaign, the status and its moment identify it.
    source = f"{event.campaign_id}|{event.status}|{event.at.isoformat()}"
    ident = event_id(Topic.CAMPAIGN_STATUS, source)
    data: dict[str, Any] = {"status": event.status, "counts": event.counts}
    if event.reason:
        data["reason"] = event.reason
    body = _body(ident, "campaign.status", event.at.isoformat(), event.campaign_id, data)
    return Outgoing(ident, "campaign.status", str(event.campaign_id), body)


def from_delivery_event(event: DeliveryEvent) -> Outgoing | None:
    kind = _DELIVERY_TYPES.get(event.event)
    if kind is None:
        return None
    # Provider event ids are unique per provider only.
    ident = event_id(Topic.DELIVERY_EVENT, f"{event.provider}|{event.event_id}")
    data: dict[str, Any] = {
        "event": event.event,
        # Our own open/click tracking knows no address (the tracker resolves it later):
        # null then, and `recipient_id` names the person.
        "email": event.email or None,
        "recipient_id": event.recipient_id,
        "provider": event.provider,
        "provider_message_id": event.provider_message_id,
    }
    for key in ("url", "link", "reason", "status", "type", "machine", "machine_reason"):
        if key in event.detail:
            data[key] = event.detail[key]
    order_key = str(event.campaign_id) if event.campaign_id else None
    body = _body(ident, kind, event.occurred_at.isoformat(), event.campaign_id, data)
    return Outgoing(ident, kind, order_key, body)


def from_contact_event(event: ContactEvent) -> Outgoing | None:
    action = str(getattr(event, "action", ""))
    kind = _CONTACT_TYPES.get(action)
    if kind is None:
        return None
    ident = event_id(Topic.CONTACT_EVENT, event.event_id)
    campaign_id: UUID | None = getattr(event, "campaign_id", None)
    data: dict[str, Any] = {"action": action}
    for key in ("recipient_id", "source", "email", "list_id"):
        value = getattr(event, key, None)
        if value is not None:
            data[key] = str(value) if isinstance(value, UUID) else value
    body = _body(ident, kind, event.occurred_at.isoformat(), campaign_id, data)
    return Outgoing(ident, kind, str(campaign_id) if campaign_id else None, body)


def digest(body: bytes) -> str:
    """Short fingerprint of a body for logs (never the body: it holds addresses)."""
    return hashlib.sha256(body).hexdigest()[:12]
