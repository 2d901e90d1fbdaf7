"""Bodies of `POST /api/v1/campaigns/{id}/test`."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from services.api.campaign_test_sender import MAX_TEST_ADDRESSES
from services.api.schemas import Strict, Text


class SendTestRequest(Strict):
    emails: list[Annotated[Text, Field(max_length=320)]] = Field(
        min_length=1,
        max_length=MAX_TEST_ADDRESSES,
        description="Where to send the test; merge fields come from the list member with "
        "the same address, if any, else only `email` is set.",
        examples=[["me@example.com", "colleague@example.com"]],
    )


class SendTestResult(BaseModel):
    email: str
    status: Literal["sent", "failed", "suppressed"] = Field(
        description="`suppressed` addresses are never mailed, not even a test."
    )
    list_member: bool = Field(description="Merge fields came from the list's recipient.")
    message_id: str | None = None
    error: str | None = None


class SendTestOut(BaseModel):
    campaign_id: UUID
    provider: str
    results: list[SendTestResult]
