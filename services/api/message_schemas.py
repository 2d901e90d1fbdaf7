"""Request and response bodies of the transactional message endpoints (issue 18 item 1)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from libs.common.events import CATEGORY_PATTERN
from services.api.schemas import HeaderText, Strict, Text

MAX_IDEMPOTENCY_KEY = 255


class MessageContent(Strict):
    subject: HeaderText = Field(min_length=1, max_length=998, examples=["Your receipt"])
    html: Text = Field(min_length=1, max_length=1_000_000, examples=["<p>Thanks {{ name }}</p>"])
    text: Text | None = Field(None, max_length=1_000_000)
    from_email: HeaderText = Field(min_length=3, max_length=254, examples=["shop@example.com"])
    from_name: HeaderText | None = Field(None, max_length=200)


class MessageIn(Strict):
    """One recipient; a stored template (`template_id`, optional `template_version`, with
    `from_email`) or inline `content`; merge `data`; an optional `category`."""

    to: HeaderText = Field(min_length=3, max_length=254, examples=["ada@example.com"])
    template_id: UUID | None = None
    template_version: int | None = Field(None, ge=1, le=2**31 - 1, description="Default: latest.")
    content: MessageContent | None = None
    from_email: HeaderText | None = Field(None, min_length=3, max_length=254)
    from_name: HeaderText | None = Field(None, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict, description="Merge fields (max 32 KB).")
    category: str | None = Field(
        None, pattern=CATEGORY_PATTERN, examples=["receipt"],
        description="Essential categories (MAILFLEET_ESSENTIAL_CATEGORIES) ignore unsubscribes.",
    )  # fmt: skip
    track: bool = Field(True, description="Own open and click tracking.")
    provider: Literal["sink", "sendgrid", "smtp"] | None = None


class MessageEventOut(BaseModel):
    event: str
    provider: str
    occurred_at: datetime
    detail: dict[str, Any]


class MessageOut(BaseModel):
    id: UUID
    to: str
    category: str | None
    status: Literal["queued", "sent", "failed", "invalid", "unknown", "suppressed", "cancelled"]
    essential: bool
    provider: str | None = None
    provider_message_id: str | None = None
    error: str | None = None
    requested_at: datetime | None = None
    sent_at: datetime | None = None
    delivery: str | None = Field(
        None, description="The latest of delivered, deferred, bounce, dropped, spamreport."
    )
    events: list[MessageEventOut] = Field(default_factory=list)
