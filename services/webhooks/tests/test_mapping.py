"""What each source event becomes on the wire (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest

from libs.common.events import CampaignStatus, ContactEvent, DeliveryEvent
from libs.webhooks.events import EVENT_TYPES
from services.webhooks.mapping import from_campaign_status, from_contact_event, from_delivery_event

CAMPAIGN = uuid.uuid4()
AT = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def delivery(kind: str, **changes: object) -> DeliveryEvent:
    values: dict[str, object] = {
        "event_id": "sg-1",
        "campaign_id": CAMPAIGN,
        "recipient_id": 7,
        "email": "ada@example.com",
        "event": kind,
        "provider": "sendgrid",
        "occurred_at": AT,
        **changes,
    }
    return DeliveryEvent.model_validate(values)


@pytest.mark.parametrize(
    ("kind", "webhook_type"),
    [
        ("delivered", "delivery.delivered"),
        ("bounce", "delivery.bounce"),
        ("spamreport", "delivery.complaint"),
        ("open", "delivery.open"),
        ("click", "delivery.click"),
        ("unsubscribe", "contact.unsubscribed"),
        ("group_unsubscribe", "contact.unsubscribed"),
        ("processed", None),
        ("deferred", None),
        ("dropped", None),
    ],
)
def test_delivery_event_types(kind: str, webhook_type: str | None) -> None:
    out = from_delivery_event(delivery(kind))
    assert (out.event_type if out else None) == webhook_type
    if out is not None:
        assert out.event_type in EVENT_TYPES
        assert out.order_key == str(CAMPAIGN)
        body = orjson.loads(out.body)
        assert body["id"] == str(out.event_id) and body["type"] == webhook_type
        assert body["campaign_id"] == str(CAMPAIGN)
        assert body["data"]["email"] == "ada@example.com"


def test_ids_are_stable_per_source_event_and_provider() -> None:
    first = from_delivery_event(delivery("open"))
    again = from_delivery_event(delivery("open"))
    other_provider = from_delivery_event(delivery("open", provider="mailfleet"))
    other_event = from_delivery_event(delivery("open", event_id="sg-2"))
    assert first and again and other_provider and other_event
    assert first.event_id == again.event_id and first.body == again.body
    assert len({first.event_id, other_provider.event_id, other_event.event_id}) == 3


def test_own_tracking_click_keeps_url_and_machine_flag_and_no_empty_email() -> None:
    out = from_delivery_event(
        delivery(
            "click",
            email="",
            provider="mailfleet",
            detail={
                "url": "https://x.example/",
                "link": 2,
                "machine": True,
                "machine_reason": "scanner",
                "useragent": "curl",
                "sent_at": 1,
            },
        )  # fmt: skip
    )
    assert out is not None
    data = orjson.loads(out.body)["data"]
    assert data["email"] is None and data["recipient_id"] == 7
    assert data["url"] == "https://x.example/" and data["machine"] is True
    assert data["machine_reason"] == "scanner" and "useragent" not in data


def test_an_event_without_campaign_has_no_order_key() -> None:
    out = from_delivery_event(delivery("delivered", campaign_id=None))
    assert out is not None and out.order_key is None


def test_campaign_status_and_unsubscribe() -> None:
    status = from_campaign_status(
        CampaignStatus(campaign_id=CAMPAIGN, status="paused", at=AT, reason="bounce rate")
    )
    body = orjson.loads(status.body)
    assert status.event_type == "campaign.status" and status.order_key == str(CAMPAIGN)
    assert body["data"] == {"status": "paused", "counts": {}, "reason": "bounce rate"}
    # A status at another moment is another event; the same one again is the same.
    later = from_campaign_status(
        CampaignStatus(campaign_id=CAMPAIGN, status="paused", at=datetime(2026, 12, 2, tzinfo=UTC))
    )
    same = from_campaign_status(
        CampaignStatus(campaign_id=CAMPAIGN, status="paused", at=AT, reason="bounce rate")
    )
    assert later.event_id != status.event_id and same.event_id == status.event_id

    unsubscribe = from_contact_event(
        ContactEvent(
            event_id="u-1",
            action="unsubscribe",
            campaign_id=CAMPAIGN,
            recipient_id=7,
            occurred_at=AT,
            source="one-click",
        )  # fmt: skip
    )
    assert unsubscribe is not None and unsubscribe.event_type == "contact.unsubscribed"
    data = orjson.loads(unsubscribe.body)["data"]
    assert data == {"action": "unsubscribe", "recipient_id": 7, "source": "one-click"}
