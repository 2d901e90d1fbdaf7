"""`contact.event` actions folded like provider events. Pure.

An unsubscribe from a link names a delivery (campaign and recipient ids), never an
address: folded as our own `unsubscribe` event, it is matched by those ids, and the store
suppresses the address that delivery was mailed to (or nobody, when no such delivery
exists). The event id is the edge's, stable per link, so repeated clicks fold once.
"""

from __future__ import annotations

from libs.common.events import ContactEvent, DeliveryEvent

PROVIDER = "mailfleet"


def as_delivery_event(contact: ContactEvent) -> DeliveryEvent:
    """An `unsubscribe` from a link, as our own provider event (it has both ids)."""
    assert contact.action == "unsubscribe", contact.action
    return DeliveryEvent(
        event_id=contact.event_id,
        campaign_id=contact.campaign_id,
        recipient_id=contact.recipient_id,
        email="",  # the store fills in the address that was mailed
        event=contact.action,
        provider=PROVIDER,
        occurred_at=contact.occurred_at,
        detail={"source": f"unsubscribe-link:{contact.source}"},
    )
