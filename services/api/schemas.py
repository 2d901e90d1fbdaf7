"""Request and response bodies of the REST API (JSON in and out)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator

from libs.common.events import SendWindow, WallTime
from libs.common.settings import ProviderName
from services.api.keys import Role
from services.api.scheduling import UnknownTimezone, zone

# Deliberately loose: the provider is the judge of deliverability; this catches typos.
_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")

T = TypeVar("T")


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail at the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


def _no_line_break(value: str) -> str:
    # A subject or sender name becomes a mail header: a line break would end it and let
    # the rest of the value add headers of its own (header injection).
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain a line break (CR or LF): it becomes a mail header")
    return value


HeaderText = Annotated[Text, AfterValidator(_no_line_break)]

CampaignStatusName = Literal[
    "draft", "scheduled", "in_progress", "paused", "completed", "failed", "cancelled"
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` to get the next page; null on the last page."
    )


# ----- lists -----


def _known_zone(value: str | None) -> str | None:
    if value is not None:
        try:
            zone(value)
        except UnknownTimezone as exc:
            raise ValueError(str(exc)) from exc
    return value


_ZONE_OF_LIST = (
    "IANA zone of the list's recipients who have no valid `timezone` merge field; used by "
    "local-time delivery and send windows (else the campaign's zone)."
)


def _check_email(value: str | None) -> str | None:
    if value is not None and not _EMAIL.match(value):
        raise ValueError("not an email address, e.g. 'news@example.com'")
    return value


_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_OPT_IN = (
    "`single`: a subscriber from the public form is mailed at once; `double`: only after"
    " following the confirmation link emailed to them (needs `confirmation_from_email`)."
)


def _field_names(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    if len(set(value)) != len(value):
        raise ValueError("field names must not repeat")
    for name in value:
        if not _FIELD_NAME.match(name) or name == "email":
            raise ValueError(f"not a field name (a-z, 0-9, _; not email): {name[:50]!r}")
    return value


class _Subscription(Strict):
    """How people subscribe on the public form (`POST /s/{public_id}` on the edge)."""

    opt_in: Literal["single", "double"] | None = Field(None, description=_OPT_IN)
    confirmation_from_email: Text | None = Field(
        None, max_length=254, description="Sender of confirmation emails."
    )
    confirmation_from_name: HeaderText | None = Field(None, max_length=200)
    confirmation_provider: ProviderName | None = Field(
        None, description="Provider of confirmation emails; the default one if unset."
    )
    editable_fields: list[str] | None = Field(
        None,
        max_length=20,
        description="Merge fields people may send with the form and change in the"
        " preference centre.",
        examples=[["first_name"]],
    )
    consent_text: Text | None = Field(
        None,
        max_length=5000,
        description="What people agree to; each change bumps `consent_text_version`.",
    )

    _names = field_validator("editable_fields")(_field_names)
    _sender = field_validator("confirmation_from_email")(_check_email)


class ListCreate(_Subscription):
    name: Text = Field(min_length=1, max_length=200, examples=["Newsletter subscribers"])
    default_timezone: Text | None = Field(
        None, max_length=64, description=_ZONE_OF_LIST, examples=["Europe/Berlin"]
    )

    _zone = field_validator("default_timezone")(_known_zone)


class ListUpdate(_Subscription):
    """Only the fields given change; `default_timezone: null` clears it."""

    name: Text | None = Field(None, min_length=1, max_length=200)
    default_timezone: Text | None = Field(None, max_length=64, description=_ZONE_OF_LIST)

    _zone = field_validator("default_timezone")(_known_zone)


class ListOut(BaseModel):
    id: UUID
    name: str
    default_timezone: str | None = None
    created_at: datetime
    public_id: str = Field(description="The list's id in the public subscribe URL.")
    opt_in: Literal["single", "double"] = "single"
    confirmation_from_email: str | None = None
    confirmation_from_name: str | None = None
    confirmation_provider: str | None = None
    editable_fields: list[str] = Field(default_factory=list)
    consent_text: str = ""
    consent_text_version: int = 1
    recipient_count: int | None = Field(None, description="Shown when reading one list.")


# ----- imports -----


class ImportAccepted(BaseModel):
    id: UUID
    list_id: UUID
    status: Literal["queued"] = "queued"


class ImportOut(BaseModel):
    id: UUID
    list_id: UUID
    filename: str
    status: Literal["queued", "running", "completed", "failed"]
    rows_total: int
    rows_imported: int
    rows_updated: int = 0
    rows_rejected: int
    rows_duplicate: int
    rows_suppressed: int = 0
    error: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


# ----- campaigns -----


MAX_PER_HOUR = 10_000_000
_MAX_PER_HOUR = (
    "The campaign's own rate cap: recipients per hour over every dispatcher (a warm-up, a "
    "partner's limit), on top of the provider's limit; sends are spread over the hour (at "
    "most ceil(cap / 60) a minute)."
)


class CampaignGuard(Strict):
    """The reputation guard's thresholds for this campaign (issue 14 item 5). A field left
    out, or null, keeps the global MAILFLEET_GUARD_* value; a maximum of 0 turns that check
    off. Rates are shares (0.05 = 5 %) over the guard's sliding window."""

    enabled: bool | None = Field(None, description="false: the guard never pauses it.")
    max_hard_bounce_rate: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    min_sends: int | None = Field(
        None, ge=1, le=10_000_000, description="Sends in the window before bounces count."
    )
    max_complaint_rate: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    min_delivered: int | None = Field(
        None, ge=1, le=10_000_000, description="Delivered in the window before complaints count."
    )
    max_deferral_rate: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    max_provider_error_rate: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


_MAX_AUDIENCE_IDS = 20
_AUDIENCE_DOC = (
    "Who gets it: the people of `lists` and of `segments` (at least one of the two), minus "
    "everyone on `exclude_lists` or in `exclude_segments`, and minus suppressed addresses; "
    "only recipients whose status on their list is `active`; each address once (with the "
    "merge fields of its row on the first list that holds it, in `lists` order). At most "
    f"{_MAX_AUDIENCE_IDS} ids of each kind. Segment filters are copied into the campaign "
    "when it is scheduled: editing a segment later does not change a scheduled campaign's "
    "audience until it is scheduled again."
)


class AudienceIn(Strict):
    lists: list[UUID] = Field(default_factory=list, max_length=_MAX_AUDIENCE_IDS)
    segments: list[UUID] = Field(default_factory=list, max_length=_MAX_AUDIENCE_IDS)
    exclude_lists: list[UUID] = Field(default_factory=list, max_length=_MAX_AUDIENCE_IDS)
    exclude_segments: list[UUID] = Field(default_factory=list, max_length=_MAX_AUDIENCE_IDS)


class AudienceOut(BaseModel):
    # A key missing from the stored definition (written by another writer than this API,
    # e.g. a test or an internal tool) reads as empty: a listing never fails on one row.
    lists: list[UUID] = Field(default_factory=list)
    segments: list[UUID] = Field(default_factory=list)
    exclude_lists: list[UUID] = Field(default_factory=list)
    exclude_segments: list[UUID] = Field(default_factory=list)


class AudiencePlanned(BaseModel):
    """The audience the scheduler snapshotted when the campaign started."""

    total: int = Field(description="Addresses in the audience, suppressed ones included.")
    suppressed: int = Field(description="Of those, suppressed: never mailed.")
    sendable: int = Field(description="total - suppressed: the addresses planned in batches.")
    planned_at: datetime


class CampaignCreate(Strict):
    """Content is either `subject` + `html` (+ `text`), or `template_id` (+ `template_version`),
    whose content is copied into the campaign."""

    name: Text = Field(min_length=1, max_length=200, examples=["March newsletter"])
    subject: HeaderText | None = Field(
        None, min_length=1, max_length=998, examples=["Hello {{ first_name }}"]
    )
    html: Text | None = Field(
        None, min_length=1, max_length=2_000_000, examples=["<p>Hi {{ first_name }}</p>"]
    )
    text: Text | None = Field(None, max_length=2_000_000)
    template_id: UUID | None = Field(None, description="Copy subject, html and text from it.")
    template_version: int | None = Field(
        None, ge=1, le=2**31 - 1, description="With template_id; default: its latest version."
    )
    from_email: Text = Field(max_length=320, examples=["news@example.com"])
    from_name: HeaderText | None = Field(None, max_length=200)
    list_id: UUID | None = Field(
        None, description='Shorthand for `audience: {"lists": [list_id]}`; give one of the two.'
    )
    audience: AudienceIn | None = Field(None, description=_AUDIENCE_DOC)
    provider: ProviderName | None = Field(None, description="Default: MAILFLEET_DEFAULT_PROVIDER.")
    tracking: bool = Field(
        True,
        description="Own open and click tracking: links in the HTML go through signed redirects"
        " on the edge and an open pixel is added (the unsubscribe link never changes).",
    )
    guard: CampaignGuard | None = Field(None, description="Default: the global thresholds.")
    max_per_hour: StrictInt | None = Field(
        None, ge=1, le=MAX_PER_HOUR, description=_MAX_PER_HOUR, examples=[50_000]
    )

    _email = field_validator("from_email")(_check_email)


class CampaignUpdate(Strict):
    """Only the fields given change. Allowed while the campaign is draft or scheduled."""

    name: Text | None = Field(None, min_length=1, max_length=200)
    subject: HeaderText | None = Field(None, min_length=1, max_length=998)
    html: Text | None = Field(None, min_length=1, max_length=2_000_000)
    text: Text | None = Field(None, max_length=2_000_000)
    from_email: Text | None = Field(None, max_length=320)
    from_name: HeaderText | None = Field(None, max_length=200)
    list_id: UUID | None = Field(None, description='Replaces the audience by {"lists": [list_id]}.')
    audience: AudienceIn | None = Field(None, description="Replaces the audience. " + _AUDIENCE_DOC)
    provider: ProviderName | None = None
    tracking: bool | None = Field(None, description="Own open and click tracking on or off.")
    guard: CampaignGuard | None = Field(None, description="null: the global thresholds again.")
    max_per_hour: StrictInt | None = Field(
        None,
        ge=1,
        le=MAX_PER_HOUR,
        description=_MAX_PER_HOUR + " null: no cap. Unlike the other fields it may change "
        "while the campaign is scheduled, sending or paused; dispatchers apply it within "
        "seconds.",
    )

    _email = field_validator("from_email")(_check_email)


class ScheduleRequest(Strict):
    send_at: datetime | None = Field(
        None,
        description="ISO-8601. Without an offset it is wall time in `timezone`. Omit for now.",
        examples=["2030-03-01T09:00:00"],
    )
    timezone: Text | None = Field(
        None,
        max_length=64,
        description="IANA zone; default MAILFLEET_DEFAULT_TIMEZONE. With `local_time`, the "
        "zone of recipients with no valid `timezone` field when their list has no default.",
        examples=["Asia/Kolkata"],
    )
    local_time: bool = Field(
        False,
        description="Deliver at `send_at`'s wall time in each recipient's zone: their "
        "`timezone` merge field (IANA), else the list's `default_timezone`, else `timezone`. "
        "Needs a `send_at` without offset. The campaign starts when the first zone (UTC+14) "
        "reaches it and spans about 26 hours.",
    )
    send_window: SendWindow | None = Field(
        None,
        description="Emit batches only inside this window of the recipient's local time; "
        "the others wait for its next opening.",
    )

    _zone = field_validator("timezone")(_known_zone)


class StatsOut(BaseModel):
    total: int
    sent: int
    failed: int
    suppressed: int
    invalid: int
    unknown: int
    cancelled: int
    pending: int
    delivery_rate: float = Field(description="sent / (total - suppressed), 0 when undefined.")
    # From the provider's events (0 until it reports; the sink never does).
    delivered: int = 0
    bounced: int = 0
    dropped: int = 0
    deferred: int = Field(0, description="Recipients deferred at least once.")
    opened: int = Field(0, description="Recipients who opened (unique opens).")
    opens: int = Field(0, description="All opens.")
    clicked: int = Field(0, description="Recipients who clicked (unique clicks).")
    clicks: int = Field(0, description="All clicks.")
    machine_opens: int = Field(
        0, description="Opens of machines (Apple Mail Privacy Protection), in `opens` only."
    )
    machine_clicks: int = Field(
        0, description="Clicks of link scanners (within seconds of the send), in `clicks` only."
    )
    unsubscribed: int = 0
    spam_reports: int = 0
    delivered_rate: float | None = Field(
        None,
        description="delivered / recipients whose fate is known; before the provider reports, "
        "accepted / attempted. Null when nothing is known yet.",
    )
    unique_open_rate: float | None = Field(None, description="opened / delivered (or sent).")
    unique_click_rate: float | None = Field(None, description="clicked / delivered (or sent).")
    health: Literal["green", "yellow", "red"] | None = Field(
        None, description="green above 95 % delivered, yellow 80-95 %, red below 80 %."
    )
    batches_total: int = 0
    batches_done: int = 0
    outcome: Literal["completed", "failed"] | None = None
    started_at: datetime | None = Field(None, description="First batch sent (dispatchers).")
    finished_at: datetime | None = Field(None, description="Last batch sent (dispatchers).")
    duration_seconds: float | None = None
    emails_per_second: float | None = None


class DeliveryOut(BaseModel):
    """One recipient's line in a campaign's delivery log."""

    recipient_id: int
    email: str
    status: str = Field(description="sent, failed, invalid, unknown or cancelled.")
    message_id: str | None
    error: str | None
    batch_id: str
    sent_at: datetime | None
    delivered_at: datetime | None
    bounced_at: datetime | None
    bounce_type: str | None
    dropped_at: datetime | None
    deferred_count: int
    opened_at: datetime | None
    open_count: int
    clicked_at: datetime | None
    click_count: int
    unsubscribed_at: datetime | None
    spam_reported_at: datetime | None
    last_event: str | None
    last_event_at: datetime | None
    updated_at: datetime


class TimelinePoint(BaseModel):
    at: datetime = Field(description="Start of the bucket (UTC).")
    sent: int
    failed: int
    batches: int
    per_second: float = Field(description="Sends per second in this bucket.")


class TimelineOut(BaseModel):
    campaign_id: UUID
    bucket_seconds: int
    points: list[TimelinePoint]


class ZoneWaiting(BaseModel):
    zone: str
    due_at: datetime = Field(description="When its next batch goes out (UTC).")
    recipients: int


class CampaignOut(BaseModel):
    id: UUID
    name: str
    subject: str
    html: str
    text: str | None
    from_email: str
    from_name: str | None
    list_id: UUID | None = Field(
        description="The audience's first list; null for an audience of segments only."
    )
    audience: AudienceOut
    audience_planned: AudiencePlanned | None = Field(
        None, description="The audience's size when the campaign was planned; when reading one."
    )
    provider: str
    tracking: bool = Field(True, description="Own open and click tracking.")
    status: CampaignStatusName
    send_at: datetime | None = Field(description="UTC, ISO-8601.")
    timezone: str | None = Field(description="The IANA zone the schedule was set in.")
    schedule_revision: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    template_id: UUID | None = Field(None, description="The template its content was copied from.")
    template_version: int | None = None
    pause_reason: str | None = Field(
        None, description="Why a paused campaign was paused, when a service paused it."
    )
    paused_by: Literal["admin", "provider", "guard"] | None = Field(
        None, description="Who paused it: an admin, or a service (a provider outage, the guard)."
    )
    guard: CampaignGuard | None = Field(
        None, description="Its own reputation guard thresholds; null: the global ones."
    )
    max_per_hour: int | None = Field(None, description=_MAX_PER_HOUR + " null: no cap.")
    local_time: bool = Field(False, description="Delivered at local time (see schedule).")
    local_send_at: WallTime | None = Field(
        None, description="With local_time: the wall time each recipient gets it at."
    )
    send_window: SendWindow | None = None
    invalid_timezones: int | None = Field(
        None,
        description="Recipients whose `timezone` field named no zone (they fell back to the "
        "list's or campaign's zone); shown once the campaign is planned, when reading one.",
    )
    waiting_by_zone: list[ZoneWaiting] | None = Field(
        None,
        description="Recipients not yet emitted per zone and when they are due, for a "
        "local-time or windowed campaign, when reading one.",
    )
    stats: StatsOut | None = Field(None, description="Shown when reading one campaign.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Set by schedule: the sender check's failures for the From domain"
        " (scheduling goes ahead), or why the check was skipped.",
    )


class SenderCheckItem(BaseModel):
    name: str = Field(
        description="spf, spf_provider, spf_lookups, dkim, dmarc, dmarc_alignment, bounce_mx"
    )
    status: Literal["pass", "warn", "fail"]
    detail: str
    fix: str | None = Field(None, description="What to change in DNS or in the configuration.")


class SenderCheckOut(BaseModel):
    domain: str
    provider: str
    status: Literal["pass", "warn", "fail", "skipped"] = Field(
        description="The worst check's status; skipped when no DNS resolver answered."
    )
    skipped: str | None = Field(None, description="Why the checks could not be run.")
    checks: list[SenderCheckItem]


class PreviewOut(BaseModel):
    recipient: str | None
    subject: str
    html: str
    text: str | None


# ----- api keys -----


class ApiKeyCreate(Strict):
    name: Text = Field(min_length=1, max_length=200, examples=["ci pipeline"])
    role: Role = Field(examples=["editor"])


class ApiKeyOut(BaseModel):
    id: UUID
    name: str
    role: Role
    key_prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself. Shown only in this answer; store it now.")
