"""An automation's definition: its trigger, its steps and its goal (issue 18 item 2).

Shared by the API (which validates and stores versions) and services/automations (which
runs them). A definition is JSON:

    {"trigger": {"kind": "joined", "list_id": "...", "sources": ["import", "api"]},
     "steps": [{"kind": "send", "template_id": "...", "from_email": "hi@example.com"},
               {"kind": "wait", "days": 3},
               {"kind": "send", "template_id": "...", "from_email": "hi@example.com"},
               {"kind": "branch", "if": "opened", "step": 2, "then": 5, "else": 6},
               ...],
     "goal": {"event": "purchase"}}

Steps are numbered from 0. A branch only jumps forward, so each (run, step) happens at most
once: the guarantee "each (automation, recipient, step) runs exactly once" is then a
primary key (automation_steps).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from libs.common.events import CATEGORY_PATTERN, CONTACT_EVENT_NAME_PATTERN
from libs.common.sendtime import parse_hhmm

MAX_STEPS = 50
MAX_WAIT_DAYS = 366
FIELD_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,63}$"


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JoinedTrigger(_Node):
    """A person became an active member of `list_id` (`contact.event` `joined`, or an
    import that inserted them), by one of `sources` (all if unset)."""

    kind: Literal["joined"]
    list_id: UUID
    sources: list[Literal["form", "confirmation", "api", "import"]] | None = Field(
        None, min_length=1, max_length=4
    )


class EventTrigger(_Node):
    """A `custom` contact.event named `event` (e.g. `trial_started`)."""

    kind: Literal["event"]
    event: str = Field(pattern=CONTACT_EVENT_NAME_PATTERN)
    list_id: UUID | None = Field(
        None, description="The list whose row of the person gives merge fields and zone."
    )


class AnniversaryTrigger(_Node):
    """Each year on the month and day of the date field `field` (YYYY-MM-DD or MM-DD) of a
    recipient of `list_id`, at `at` in their local time (their `timezone` field, else
    `timezone`). 29 February is kept on 28 February in other years."""

    kind: Literal["anniversary"]
    list_id: UUID
    field: str = Field(pattern=FIELD_PATTERN)
    at: str = Field("09:00", max_length=5)
    timezone: str = Field("UTC", max_length=64)

    @model_validator(mode="after")
    def _check(self) -> AnniversaryTrigger:
        parse_hhmm(self.at)
        return self


Trigger = Annotated[JoinedTrigger | EventTrigger | AnniversaryTrigger, Field(discriminator="kind")]


class SendStep(_Node):
    """Send template `template_id` (its `template_version`, else the latest at send time)."""

    kind: Literal["send"]
    template_id: UUID
    template_version: int | None = Field(None, ge=1, le=100_000)
    from_email: str = Field(min_length=3, max_length=254)
    from_name: str | None = Field(None, max_length=200)
    category: str | None = Field(None, pattern=CATEGORY_PATTERN)


class WaitStep(_Node):
    """Wait `days` + `hours` + `minutes` after the previous step was due (no drift)."""

    kind: Literal["wait"]
    days: int = Field(0, ge=0, le=MAX_WAIT_DAYS)
    hours: int = Field(0, ge=0, le=24 * MAX_WAIT_DAYS)
    minutes: int = Field(0, ge=0, le=60 * 24 * MAX_WAIT_DAYS)

    @model_validator(mode="after")
    def _positive(self) -> WaitStep:
        if self.seconds() <= 0:
            raise ValueError("a wait needs days, hours or minutes")
        if self.seconds() > MAX_WAIT_DAYS * 86_400:
            raise ValueError(f"a wait is at most {MAX_WAIT_DAYS} days")
        return self

    def seconds(self) -> int:
        return self.days * 86_400 + self.hours * 3_600 + self.minutes * 60


class WaitUntilStep(_Node):
    """Wait until the next `at` (HH:MM) in the person's local time (their `timezone` field,
    else `timezone`); now if it is that minute already."""

    kind: Literal["wait_until"]
    at: str = Field(max_length=5)
    timezone: str = Field("UTC", max_length=64)

    @model_validator(mode="after")
    def _check(self) -> WaitUntilStep:
        parse_hhmm(self.at)
        return self


class BranchStep(_Node):
    """Go to step `then` if the person `if` (opened, clicked) the mail of send step `step`,
    else to step `else` (the next step if unset). Both forward only."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    kind: Literal["branch"]
    condition: Literal["opened", "clicked"] = Field(alias="if")
    step: int = Field(ge=0, lt=MAX_STEPS)
    then: int = Field(ge=0, le=MAX_STEPS)
    otherwise: int | None = Field(None, alias="else", ge=0, le=MAX_STEPS)


class StopStep(_Node):
    kind: Literal["stop"]


Step = Annotated[
    SendStep | WaitStep | WaitUntilStep | BranchStep | StopStep, Field(discriminator="kind")
]


class Goal(_Node):
    """A `custom` contact.event named `event` about the person stops their run: reached."""

    event: str = Field(pattern=CONTACT_EVENT_NAME_PATTERN)


class Definition(_Node):
    trigger: Trigger
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    goal: Goal | None = None

    @model_validator(mode="after")
    def _check_steps(self) -> Definition:
        for path, message in self.problems():
            raise ValueError(f"{path}: {message}")
        return self

    def problems(self) -> list[tuple[str, str]]:
        """(path, message) of each inconsistency between steps."""
        found: list[tuple[str, str]] = []
        n = len(self.steps)
        for i, step in enumerate(self.steps):
            if not isinstance(step, BranchStep):
                continue
            where = f"steps.{i}"
            if step.step >= i or not isinstance(self.steps[step.step], SendStep):
                found.append((f"{where}.step", f"step {step.step} is not an earlier send step"))
            for name, target in (("then", step.then), ("else", step.otherwise)):
                if target is not None and not i < target <= n:
                    found.append((f"{where}.{name}", f"jumps to {target}: only forward, up to {n}"))
        return found

    def send_steps(self) -> list[int]:
        return [i for i, s in enumerate(self.steps) if isinstance(s, SendStep)]

    def template_ids(self) -> list[tuple[int, UUID, int | None]]:
        return [
            (i, s.template_id, s.template_version)
            for i, s in enumerate(self.steps)
            if isinstance(s, SendStep)
        ]

    def dump(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


DEFINITION = TypeAdapter(Definition)


def parse_month_day(value: object) -> tuple[int, int] | None:
    """(month, day) of a date field: 'YYYY-MM-DD' (or a longer ISO timestamp) or 'MM-DD';
    None when it is not one."""
    if not isinstance(value, str) or not 5 <= len(value) <= 40:
        return None
    text = value.strip()
    try:
        if len(text) == 5 and text[2] == "-":
            month, day = int(text[:2]), int(text[3:])
            date(2000, month, day)  # a leap year: 02-29 is valid
            return month, day
        parsed = date.fromisoformat(text[:10])
    except ValueError:
        return None
    return parsed.month, parsed.day
