"""Request and response bodies of /api/v1/automations (definitions: libs/automations)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from libs.automations.definition import Definition


class AutomationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    definition: Definition
    status: Literal["active", "paused"] = Field(
        "active", description="`paused`: people are enrolled, but no step runs until resumed."
    )


class AutomationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    definition: Definition | None = Field(
        None, description="A new version: new runs start on it; runs in flight keep theirs."
    )


class StepStats(BaseModel):
    version: int
    step: int
    sent: int = Field(description="Mails of this step queued for sending (once per run).")
    opened: int = Field(description="Of those, mails opened (own pixel or provider events).")
    clicked: int
    goal: int = Field(description="Of those, runs that reached the automation's goal later.")


class AutomationOut(BaseModel):
    id: UUID
    name: str
    status: Literal["active", "paused"]
    version: int = Field(description="The current version: new runs start on it.")
    definition: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    runs: dict[str, int] = Field(
        default_factory=dict, description="Runs by status: active, completed, stopped."
    )
    steps: list[StepStats] = Field(default_factory=list, description="Per send step.")


class RunStepOut(BaseModel):
    step: int
    kind: str
    outcome: str
    message_id: UUID | None
    done_at: datetime


class RunOut(BaseModel):
    id: int
    automation_id: UUID
    version: int
    email: str
    trigger: str
    status: Literal["active", "completed", "stopped"]
    step: int = Field(description="The next step to run (active runs).")
    due_at: datetime | None = Field(description="When that step is due (active runs).")
    stop_reason: str | None
    goal_at: datetime | None
    started_at: datetime
    finished_at: datetime | None
    steps: list[RunStepOut] = Field(default_factory=list)


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")
