"""Request and response bodies of /api/v1/webhooks (outbound webhooks, issue 18 item 3)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from libs.webhooks.events import WebhookEventType
from services.api.schemas import Strict, Text

EVENT_TYPES_DOC = (
    "What to send: `campaign.status`; `delivery.delivered`, `delivery.bounce`, "
    "`delivery.complaint`, `delivery.open`, `delivery.click`; `contact.unsubscribed`; "
    "`contact.confirmed` and `automation.step` (accepted; nothing produces them yet)."
)


class WebhookCreate(Strict):
    url: Text = Field(
        min_length=1,
        max_length=2000,
        description="https:// URL; its host must resolve to public addresses, or to ones "
        "allowed by MAILFLEET_WEBHOOK_ALLOWED_TARGETS.",
        examples=["https://hooks.example.com/mailfleet"],
    )
    event_types: list[WebhookEventType] = Field(
        min_length=1, max_length=20, description=EVENT_TYPES_DOC
    )
    description: Text = Field("", max_length=500)


class WebhookUpdate(Strict):
    url: Text | None = Field(None, min_length=1, max_length=2000)
    event_types: list[WebhookEventType] | None = Field(None, min_length=1, max_length=20)
    description: Text | None = Field(None, max_length=500)
    enabled: bool | None = Field(
        None,
        description="false: stop sending (pending deliveries wait); true: resume, also "
        "after the sender disabled a failing endpoint (its failure streak restarts at 0).",
    )


class WebhookOut(BaseModel):
    id: UUID
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: Literal["admin", "failing"] | None = Field(
        description="`failing`: the sender disabled it after a streak of failed attempts."
    )
    disabled_at: datetime | None
    failure_streak: int = Field(description="Failed attempts in a row since the last success.")
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Signing secret (HMAC-SHA256). Shown only in this answer; store it now."
    )


class WebhookDeliveryOut(BaseModel):
    id: UUID
    event_id: UUID = Field(description="Also in the body and Mailfleet-Event-Id: dedupe on it.")
    event_type: str
    campaign_id: str | None = Field(description="Deliveries of one campaign keep their order.")
    status: Literal["pending", "delivered", "failed"] = Field(
        description="`failed`: given up after the retry window."
    )
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
