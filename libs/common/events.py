"""Event schemas: the contract between the services (see docs/events/ for JSON Schema).

Every event carries `schema_version`. A consumer validates each record against the model
of its topic; a record that does not validate goes to `<topic>.dlq` with the reason.
Add a field with a default to evolve a schema; bump `schema_version` only for a change
that old consumers cannot read.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NaiveDatetime,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from libs.common.sendtime import Window, parse_hhmm


class Topic(StrEnum):
    CAMPAIGN_SCHEDULED = "campaign.scheduled"
    CAMPAIGN_CONTROL = "campaign.control"
    IMPORT_REQUESTED = "import.requested"
    IMPORT_PROGRESS = "import.progress"
    IMPORT_COMPLETED = "import.completed"
    BATCH_READY = "batch.ready"
    DELIVERY_RESULT = "delivery.result"
    DELIVERY_EVENT = "delivery.event"
    CONTACT_EVENT = "contact.event"
    CAMPAIGN_STATUS = "campaign.status"
    MESSAGE_REQUESTED = "message.requested"

    @property
    def dlq(self) -> str:
        return f"{self.value}.dlq"


class Event(BaseModel):
    # Unknown fields are ignored so that a newer producer does not break an older consumer.
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = 1


# A wall time without offset (local-time delivery). Its JSON Schema is a pattern, not
# `format: date-time`, which RFC 3339 defines with an offset.
WallTime = Annotated[
    NaiveDatetime,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$",
            "examples": ["2030-03-01T09:00:00"],
        }
    ),
]

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _every_day() -> list[Day]:
    return ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class SendWindow(BaseModel):
    """When batches may go out, in each recipient's local time: from `start` to `end`
    (HH:MM, `end` after `start`: no window across midnight) on `days`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(max_length=5, examples=["08:00"], description="HH:MM, 24 h, inclusive.")
    end: str = Field(max_length=5, examples=["20:00"], description="HH:MM, 24 h, exclusive.")
    days: list[Day] = Field(
        default_factory=_every_day,
        min_length=1,
        max_length=7,
        examples=[["mon", "tue", "wed", "thu", "fri"]],
        description="Days it opens on; default every day.",
    )

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        parse_hhmm(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> SendWindow:
        start, end = parse_hhmm(self.start), parse_hhmm(self.end)
        if end <= start:
            raise ValueError(f"end {self.end} must be after start {self.start} (same day)")
        if len(set(self.days)) != len(self.days):
            raise ValueError("days must not repeat")
        return self

    def window(self) -> Window:
        return Window.parse(self.start, self.end, list(self.days))


class CampaignScheduled(Event):
    """Start `campaign_id` at `send_at`. A higher `revision` replaces an earlier schedule."""

    campaign_id: UUID
    send_at: AwareDatetime = Field(description="When to start, with its UTC offset.")
    timezone: str = Field("UTC", description="IANA zone the time was chosen in, for display.")
    revision: int = Field(1, ge=1, description="Increases with every (re)schedule.")
    local_time: bool = Field(
        False,
        description="Deliver at `local_send_at` in each recipient's zone (their `timezone` "
        "field, else the list's default zone, else `timezone`); `send_at` is then the "
        "earliest instant any zone reaches it (local_send_at - 14 h, as UTC).",
    )
    local_send_at: WallTime | None = Field(
        None, description="With local_time: the wall time, without offset."
    )
    send_window: SendWindow | None = Field(
        None, description="Batches outside it, in the recipient's local time, wait for it."
    )

    @model_validator(mode="after")
    def _local_needs_wall_time(self) -> CampaignScheduled:
        if self.local_time and self.local_send_at is None:
            raise ValueError("local_time needs local_send_at")
        return self


class CampaignControl(Event):
    campaign_id: UUID
    action: Literal["pause", "resume", "cancel", "unschedule"]
    revision: int = Field(1, ge=1)
    # Who asks. `admin`: the API applied it before publishing. Any other origin (a
    # dispatcher whose provider refused the account, the guard) asks the scheduler to
    # apply the pause (see docs/design.md).
    origin: Literal["admin", "provider", "guard"] = "admin"
    reason: str | None = Field(None, max_length=1000)


class ColumnMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str | None = Field(None, description="Header of the address column; found if unset.")


ConsentBasis = Literal[
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interest",
]


class ConsentStatement(BaseModel):
    """The legal basis (GDPR art. 6) on which rows brought by an import or the API may be
    mailed, and where it was collected. Stored in the `consents` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    basis: ConsentBasis
    source: str | None = Field(
        None,
        min_length=1,
        max_length=40,
        description="Where the consent was collected, e.g. `webinar-2030-03`; default"
        " `import` or `api`.",
    )


class ImportRequested(Event):
    """Import the file behind `file_ref` (a claim check in the blob store) into `list_id`."""

    import_id: UUID
    list_id: UUID
    file_ref: str = Field(description="Claim check, e.g. 'blob:<uuid>'.")
    filename: str = ""
    mapping: ColumnMapping = ColumnMapping()
    encoding: str | None = Field(
        None, description="Text encoding of a CSV (e.g. 'utf-8', 'cp1252'); detected if unset."
    )
    delimiter: str | None = Field(
        None, description="CSV delimiter (one character); detected if unset."
    )
    sheet: str | None = Field(None, description="Spreadsheet sheet to read; the first if unset.")
    consent: ConsentStatement | None = Field(
        None, description="The consent basis of the rows the file brings (recorded once)."
    )


class ImportProgress(Event):
    import_id: UUID
    list_id: UUID
    status: Literal["queued", "running", "completed", "failed"]
    rows_total: int = 0
    rows_imported: int = 0
    rows_updated: int = 0
    rows_rejected: int = 0
    rows_duplicate: int = 0
    rows_suppressed: int = 0
    error: str | None = None


class BatchRecipient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    recipient_id: int
    email: str
    fields: dict[str, Any] = Field(default_factory=dict)


# (recipient id, address, merge fields): a recipient of a batch of the plan.
PlannedRecipient = tuple[int, str, dict[str, Any]]


class BatchReady(Event):
    """One batch of a campaign's plan, with everything a dispatcher needs to send it."""

    batch_id: str = Field(description="'<campaign id>:<batch number>', stable across re-emits.")
    campaign_id: UUID
    batch_no: int = Field(ge=0)
    batches_total: int = Field(ge=1)
    audience_total: int = Field(ge=0, description="Recipients in the campaign's audience.")
    suppressed_total: int = Field(ge=0, description="Audience members skipped as suppressed.")
    content_id: UUID = Field(description="Claim check of the frozen campaign content.")
    provider: str
    recipients: list[BatchRecipient]
    emitted: int = Field(1, ge=1, description="How many times the scheduler emitted it.")
    suppressed_ids: list[int] = Field(
        default_factory=list,
        max_length=10_000,
        description="Recipients of `recipients` suppressed since planning (found at emit):"
        " reported `suppressed`, never mailed.",
    )
    variant: str | None = Field(
        None,
        pattern=r"^[A-E]$",
        description="The A/B test variant of a test-group batch (its content is that"
        " variant's); unset for the remainder (sent the winner's content) and for campaigns"
        " without a test.",
    )


# `suppressed`: the address was suppressed after the campaign was planned (found at emit or
# at claim time) and was not mailed; the tracker adds it to the campaign's suppressed count.
RecipientStatus = Literal["sent", "failed", "invalid", "unknown", "cancelled", "suppressed"]


class RecipientOutcome(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    recipient_id: int
    email: str
    status: RecipientStatus
    message_id: str | None = None
    error: str | None = None


class DeliveryResult(Event):
    batch_id: str
    campaign_id: UUID
    batch_no: int = Field(ge=0)
    batches_total: int = Field(ge=1)
    audience_total: int = Field(ge=0)
    suppressed_total: int = Field(ge=0)
    provider: str
    outcomes: list[RecipientOutcome]
    started_at: datetime
    finished_at: datetime
    replayed: bool = Field(False, description="Re-emitted from the send ledger, not re-sent.")
    # Set for a transactional message (then `campaign_id` is the message id, `batch_id`
    # `msg:<message id>`, and the only recipient's id is 0): the tracker keeps its status
    # in `messages` instead of adding it to any campaign's counts.
    message_id: UUID | None = Field(None, description="The transactional message's id.")
    category: str | None = Field(None, description="The transactional message's category.")
    variant: str | None = Field(
        None,
        pattern=r"^[A-E]$",
        description="The A/B test variant of the batch (copied from its `batch.ready`); the"
        " tracker keeps counters per variant.",
    )


DeliveryEventType = Literal[
    "processed",
    "delivered",
    "bounce",
    "dropped",
    "deferred",
    "open",
    "click",
    "spamreport",
    "unsubscribe",
    "group_unsubscribe",
]


class DeliveryEvent(Event):
    event_id: str = Field(description="Provider's id of the event; the tracker dedupes on it.")
    campaign_id: UUID | None = None
    recipient_id: int | None = None
    email: str
    event: DeliveryEventType
    provider: str
    provider_message_id: str | None = None
    occurred_at: AwareDatetime
    detail: dict[str, Any] = Field(default_factory=dict)


ContactAction = Literal[
    "unsubscribe", "subscribed", "confirmed", "joined", "left", "preferences", "custom"
]
ContactSource = Literal[
    "one-click", "page", "form", "api", "import", "confirmation", "preferences", "service"
]
CONTACT_EVENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
MAX_CONTACT_DATA_BYTES = 16_000


class ContactEvent(Event):
    """Something a person did, or that happened to their subscription. Keyed by address
    (or, for an unsubscribe from a link, by the delivery), so one person's events stay
    ordered.

    - `unsubscribe` (the edge, from a link): names the delivery (campaign and recipient
      ids from the signed link), never an address: the tracker resolves the address that
      was mailed from the delivery log, so an old link still works after the recipient's
      row is edited or deleted.
    - `subscribed`: a subscription was asked for (`email`, `list_id`; for a double opt-in
      list it waits for confirmation). `data` carries the consent record (`ip`,
      `user_agent`, `consent_text_version`, `fields`).
    - `confirmed`: the confirmation link of a double opt-in subscription was followed.
    - `joined`: the person is now an active member of `list_id` (`source`: `form` for a
      single opt-in list, `confirmation`, `api`, `import`). Automations trigger on it.
    - `left`: the person left `list_id` (the preference centre).
    - `preferences`: the person changed their own fields (`data`: the new values).
    - `custom`: an internal service's event `name` about `email`, with `data` (for
      example `trial_started`). Automations trigger on it.
    """

    event_id: str = Field(
        max_length=255, description="Stable for one action: consumers dedupe on it."
    )
    action: ContactAction
    campaign_id: UUID | None = Field(None, description="`unsubscribe`: the delivery's campaign.")
    recipient_id: int | None = Field(
        None, ge=0, le=2**63 - 1, description="`unsubscribe`: the delivery's recipient."
    )
    email: str | None = Field(None, min_length=3, max_length=254, description="The person.")
    list_id: UUID | None = Field(None, description="The list, for list actions.")
    name: str | None = Field(
        None, pattern=CONTACT_EVENT_NAME_PATTERN, description="`custom`: the event's name."
    )
    data: dict[str, Any] = Field(default_factory=dict)
    occurred_at: AwareDatetime
    source: ContactSource | None = Field(
        None,
        description="`one-click`: the RFC 8058 POST a mail client sends; `page`: the"
        " unsubscribe form; others: where a subscription came from.",
    )

    @property
    def key(self) -> str:
        """The record's key: the address, so that one person's events stay ordered; for
        an unsubscribe from a link, which names no address, the delivery it was in."""
        if self.action == "unsubscribe":
            return f"{self.campaign_id}:{self.recipient_id}"
        return self.email or ""

    @model_validator(mode="after")
    def _fields_of_action(self) -> ContactEvent:
        if self.action == "unsubscribe":
            if self.campaign_id is None or self.recipient_id is None:
                raise ValueError("unsubscribe needs campaign_id and recipient_id")
            return self
        if self.email is None:
            raise ValueError(f"{self.action} needs email")
        if self.action in ("subscribed", "confirmed", "joined", "left") and self.list_id is None:
            raise ValueError(f"{self.action} needs list_id")
        if self.action == "custom" and self.name is None:
            raise ValueError("custom needs name")
        if len(json.dumps(self.data, default=str)) > MAX_CONTACT_DATA_BYTES:
            raise ValueError(f"data is larger than {MAX_CONTACT_DATA_BYTES} bytes")
        return self


class CampaignStatus(Event):
    campaign_id: UUID
    status: Literal["in_progress", "completed", "failed", "paused", "cancelled"]
    counts: dict[str, int] = Field(default_factory=dict)
    at: AwareDatetime
    reason: str | None = Field(None, description="Why, for a pause that was not an admin's.")


MAX_MERGE_DATA_BYTES = 32_000
CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class InlineContent(BaseModel):
    """A message's own content, rendered like a template (merge fields, sandboxed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str = Field(min_length=1, max_length=998)
    html: str = Field(min_length=1, max_length=1_000_000)
    text: str | None = Field(None, max_length=1_000_000)
    from_email: str = Field(min_length=3, max_length=254)
    from_name: str | None = Field(None, max_length=200)


class MessageRequested(Event):
    """One transactional message: one recipient, a stored template (a version of it, the
    latest if unset) or inline content, its merge data and an optional category.

    Exactly one of `template_id` and `content`. With a template, the sender is
    `from_email`/`from_name` (both required then). `idempotency_key`: the same key within
    24 h sends once; reused with a different message it is refused (dead-lettered here,
    409 on the API). Key the record by the recipient address.
    """

    message_id: UUID | None = Field(
        None, description="Your id for the message (a new one if unset and no key is given)."
    )
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)
    to: str = Field(min_length=3, max_length=254, description="The recipient address.")
    template_id: UUID | None = None
    template_version: int | None = Field(None, ge=1, le=100_000)
    content: InlineContent | None = None
    from_email: str | None = Field(None, min_length=3, max_length=254)
    from_name: str | None = Field(None, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict, description="Merge fields.")
    category: str | None = Field(
        None,
        pattern=CATEGORY_PATTERN,
        description="e.g. `receipt`, `password_reset`; essential ones ignore unsubscribes.",
    )
    track: bool = Field(True, description="Own open and click tracking.")
    provider: str | None = Field(None, max_length=40, description="Default: the default one.")
    requested_at: AwareDatetime | None = Field(
        None, description="When it was asked for (latency is measured from it)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> MessageRequested:
        if (self.template_id is None) == (self.content is None):
            raise ValueError("give exactly one of template_id and content")
        if self.template_id is None and self.template_version is not None:
            raise ValueError("template_version needs template_id")
        if self.template_id is not None and not self.from_email:
            raise ValueError("from_email is required with template_id")
        if len(json.dumps(self.data, default=str)) > MAX_MERGE_DATA_BYTES:
            raise ValueError(f"data is larger than {MAX_MERGE_DATA_BYTES} bytes")
        return self


# Which model validates the records of which topic.
TOPIC_MODELS: dict[Topic, type[Event]] = {
    Topic.CAMPAIGN_SCHEDULED: CampaignScheduled,
    Topic.CAMPAIGN_CONTROL: CampaignControl,
    Topic.IMPORT_REQUESTED: ImportRequested,
    Topic.IMPORT_PROGRESS: ImportProgress,
    Topic.IMPORT_COMPLETED: ImportProgress,
    Topic.BATCH_READY: BatchReady,
    Topic.DELIVERY_RESULT: DeliveryResult,
    Topic.DELIVERY_EVENT: DeliveryEvent,
    Topic.CONTACT_EVENT: ContactEvent,
    Topic.CAMPAIGN_STATUS: CampaignStatus,
    Topic.MESSAGE_REQUESTED: MessageRequested,
}


def encode(event: Event | bytes) -> bytes:
    """An event's record value; bytes are taken as already encoded (`encode_batch_ready`)."""
    return event if isinstance(event, bytes) else event.model_dump_json().encode()


def encode_batch_ready(header: BatchReady, recipients_json: bytes) -> bytes:
    """`encode(header)` with the JSON array `recipients_json` as its recipients, spliced in
    as it is: the scheduler has PostgreSQL build that array from the plan, because a
    `BatchRecipient` per recipient (2.6 us) and the row decoding before it were most of the
    scheduler's CPU at a million emails. Every consumer still validates the event it
    reads; a test holds this equal to the model's own JSON."""
    body = header.model_dump(mode="json")
    body["recipients"] = orjson.Fragment(recipients_json)
    return orjson.dumps(body)


def export_json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every topic's value, keyed by topic name."""
    schemas: dict[str, dict[str, Any]] = {}
    for topic, model in TOPIC_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://mailfleet.dev/events/{topic.value}.v1.json"
        schema["title"] = f"{topic.value} (v1)"
        schemas[topic.value] = schema
    return schemas
