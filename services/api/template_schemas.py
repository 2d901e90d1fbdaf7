"""Request and response bodies of the template endpoints."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

from services.api.schemas import HeaderText, Strict, Text

MAX_VERSION = 2**31 - 1  # template_versions.version is an int


class TemplateCreate(Strict):
    name: Text = Field(min_length=1, max_length=200, examples=["Monthly newsletter"])
    description: Text | None = Field(None, max_length=2000)
    subject: HeaderText = Field(
        min_length=1, max_length=998, examples=["News for {{ first_name }}"]
    )
    html: Text = Field(min_length=1, max_length=2_000_000, examples=["<p>Hi {{ first_name }}</p>"])
    text: Text | None = Field(None, max_length=2_000_000, examples=["Hi {{ first_name }}"])


class TemplateUpdate(Strict):
    """Only the fields given change. New subject/html/text make a new version; the parts
    not given are carried over from the latest version. `text: null` removes the text part."""

    name: Text | None = Field(None, min_length=1, max_length=200)
    description: Text | None = Field(None, max_length=2000)
    subject: HeaderText | None = Field(None, min_length=1, max_length=998)
    html: Text | None = Field(None, min_length=1, max_length=2_000_000)
    text: Text | None = Field(None, max_length=2_000_000)


class TemplateSummary(BaseModel):
    id: UUID
    name: str
    description: str | None
    latest_version: int
    created_at: datetime
    updated_at: datetime


class TemplateOut(TemplateSummary):
    version: int = Field(description="The version whose content is shown.")
    subject: str
    html: str
    text: str | None
    version_created_at: datetime


class TemplateVersionOut(BaseModel):
    template_id: UUID
    version: int
    subject: str
    html: str
    text: str | None
    created_at: datetime
