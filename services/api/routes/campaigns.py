"""Campaigns: create, read, edit, schedule, unschedule, duplicate, preview; delivery log."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query, Response

from libs.common.audience import Audience
from libs.common.events import CampaignControl, CampaignScheduled, Topic
from libs.common.logging import bound_contextvars, get_logger
from libs.common.templating import (
    RenderBudget,
    TemplateTooCostly,
    check_template,
    costly_problem,
    render,
    render_limits,
)
from libs.stats import read_models
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import ab_repo, audiences, deletions_repo, repository
from services.api.audit import Target, record_audit
from services.api.deletion_rules import why_campaign_is_kept
from services.api.deps import ApiResources, CanEdit, CanRead, Resources
from services.api.pagination import BadCursor
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor, not_found
from services.api.routes.senders import schedule_warnings
from services.api.scheduling import (
    UnrepresentableTime,
    resolve_local_send_at,
    resolve_send_at,
)
from services.api.schemas import (
    AudiencePlanned,
    CampaignCreate,
    CampaignOut,
    CampaignStatusName,
    CampaignUpdate,
    DeliveryOut,
    Page,
    PreviewOut,
    ScheduleRequest,
    StatsOut,
    TimelineOut,
    TimelinePoint,
    ZoneWaiting,
)
from services.api.stats import TERMINAL, campaign_stats
from services.api.template_use import resolve_campaign_content

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])

_TEMPLATE_PARTS = ("subject", "html", "text")


def check_templates(values: dict[str, Any]) -> None:
    """422 naming the part and line of every template that does not parse."""
    problems = [
        problem
        for part in _TEMPLATE_PARTS
        if values.get(part) is not None
        and (problem := check_template(part, values[part])) is not None
    ]
    if problems:
        raise ProblemError(
            422,
            "template error: " + "; ".join(str(p) for p in problems),
            kind="template-error",
            errors=[
                FieldError(field=f"body.{p.part}", message=p.message, line=p.line) for p in problems
            ],
        )


async def refuse_costly_templates(
    resources: ApiResources, values: dict[str, Any], where: str = "body"
) -> None:
    """422 when the content, rendered without merge fields, goes past the render limits
    (time, size): such a template would fail every recipient, or stall a dispatcher."""
    parts = {part: values.get(part) for part in _TEMPLATE_PARTS}
    limits = render_limits(resources.settings)
    problem = await asyncio.to_thread(costly_problem, parts, limits)
    if problem is not None:
        raise ProblemError(
            422,
            f"template too costly: {problem}",
            kind="template-too-costly",
            errors=[FieldError(field=f"{where}.{problem.part}", message=problem.message)],
        )


async def _require_list(resources: ApiResources, list_id: UUID) -> None:
    if not await repository.list_exists(resources.db, list_id):
        raise ProblemError(
            422,
            f"list_id: no list with id {list_id}; create it with POST /api/v1/lists",
            kind="validation",
            errors=[FieldError(field="body.list_id", message="no list with this id")],
        )


async def _audience_columns(
    resources: ApiResources, values: dict[str, Any], *, required: bool
) -> dict[str, Any]:
    """The campaign columns set by `audience` or its shorthand `list_id` in a body; {} when
    neither is given (and not `required`)."""
    raw, list_id = values.get("audience"), values.get("list_id")
    if raw is not None:
        audience, filters = await audiences.resolve(resources.db, raw)
        if list_id is not None and list_id != audience.primary_list:
            message = "must be the audience's first list, or left out"
            raise ProblemError(
                422,
                f"list_id: {message}",
                kind="validation",
                errors=[FieldError(field="body.list_id", message=message)],
            )
        return audiences.columns(audience, filters)
    if list_id is not None:
        await _require_list(resources, list_id)
        return audiences.columns(Audience.of_list(list_id), {})
    if required:
        message = "give the audience, or its shorthand list_id"
        raise ProblemError(
            422,
            message,
            kind="validation",
            errors=[FieldError(field="body.audience", message=message)],
        )
    return {}


async def campaign_with_stats(resources: ApiResources, row: dict[str, Any]) -> CampaignOut:
    zones: dict[str, Any] = {}
    if row.get("local_time") or row.get("send_window") is not None:
        progress = await repository.zone_progress(resources.db, row["id"])
        if progress is not None:
            invalid, waiting = progress
            zones = {
                "invalid_timezones": invalid,
                "waiting_by_zone": [ZoneWaiting(**w) for w in waiting],
            }
    planned = await repository.audience_plan(resources.db, row["id"])
    if planned is not None:
        zones["audience_planned"] = AudiencePlanned(**planned)
    report = await read_models.campaign_report(resources.db, row["id"])
    if report is not None:
        return CampaignOut(**row, **zones, stats=StatsOut(**report))
    if planned is not None:
        # Planned, and no batch folded yet (e.g. paused before its first result): the
        # audience of the plan, as the tracker will count it.
        counters = {name: 0 for name in TERMINAL}
        counters.update(audience_total=planned["total"], suppressed=planned["suppressed"])
        stats = StatsOut(**campaign_stats(counters, 0).as_dict())
        return CampaignOut(**row, **zones, stats=stats)
    # Not planned yet: the audience as it is now (0 when it cannot be counted in time).
    size = await audiences.count_now(resources.db, row)
    stats = StatsOut(**campaign_stats(None, size or 0).as_dict())
    return CampaignOut(**row, **zones, stats=stats)


async def _editable_or_problem(resources: ApiResources, campaign_id: UUID, action: str) -> None:
    """Called after a compare-and-set matched nothing: say why."""
    row = await repository.get_campaign(resources.db, campaign_id)
    if row is None:
        raise not_found("campaign", campaign_id)
    raise ProblemError(
        409,
        f"cannot {action} a campaign that is {row['status']}",
        kind="campaign-state",
    )


@router.post(
    "",
    status_code=201,
    response_model=CampaignOut,
    responses=problem_responses(401, 403, 413, 422),
)
async def create_campaign(body: CampaignCreate, resources: Resources, _: CanEdit) -> CampaignOut:
    """Content inline (subject, html, text) or copied from a template (template_id); the
    audience, or its shorthand `list_id`."""
    values = await resolve_campaign_content(resources.db, body.model_dump())
    check_templates(values)
    await refuse_costly_templates(resources, values)
    values.update(await _audience_columns(resources, values, required=True))
    values["provider"] = body.provider or resources.settings.default_provider
    row = await repository.insert_campaign(resources.db, values)
    log.info("campaign created", campaign_id=str(row["id"]))
    return await campaign_with_stats(resources, row)


@router.get("", response_model=Page[CampaignOut], responses=problem_responses(401, 422))
async def list_campaigns(
    resources: Resources,
    _: CanRead,
    status: Annotated[CampaignStatusName | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> Page[CampaignOut]:
    try:
        rows, next_cursor = await repository.page_campaigns(resources.db, status, cursor, limit)
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[CampaignOut](items=[CampaignOut(**r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{campaign_id}", response_model=CampaignOut, responses=problem_responses(401, 404, 422)
)
async def get_campaign(campaign_id: UUID, resources: Resources, _: CanRead) -> CampaignOut:
    row = await repository.get_campaign(resources.db, campaign_id)
    if row is None:
        raise not_found("campaign", campaign_id)
    return await campaign_with_stats(resources, row)


@router.patch(
    "/{campaign_id}",
    response_model=CampaignOut,
    responses=problem_responses(401, 403, 404, 409, 413, 422),
)
async def update_campaign(
    campaign_id: UUID, body: CampaignUpdate, resources: Resources, caller: CanEdit
) -> CampaignOut:
    """Edit while draft or scheduled; a running campaign sends its frozen content. The rate
    cap (`max_per_hour`), given alone, may change until the campaign has ended."""
    changes = body.model_dump(exclude_unset=True)
    for required in (
        "name", "subject", "html", "from_email", "list_id", "audience", "provider", "tracking"
    ):  # fmt: skip
        if required in changes and changes[required] is None:
            raise ProblemError(
                422,
                f"{required} cannot be null",
                kind="validation",
                errors=[FieldError(field=f"body.{required}", message="cannot be null")],
            )
    check_templates(changes)
    await refuse_costly_templates(resources, changes)
    changes.update(await _audience_columns(resources, changes, required=False))
    if not changes:
        row = await repository.get_campaign(resources.db, campaign_id)
        if row is None:
            raise not_found("campaign", campaign_id)
        return await campaign_with_stats(resources, row)
    async with resources.db.acquire() as conn, conn.transaction():
        updated = await repository.update_campaign_content(conn, campaign_id, changes)
        if updated is None:
            await _editable_or_problem(resources, campaign_id, "edit")
        assert updated is not None
        if "max_per_hour" in changes:
            # A cap changes what a running campaign does: who changed it, and to what.
            await record_audit(
                conn,
                caller.actor,
                "campaign.rate_cap",
                Target("campaign", str(campaign_id)),
                {"max_per_hour": changes["max_per_hour"], "status": updated["status"]},
            )
    log.info("campaign edited", campaign_id=str(campaign_id), fields=sorted(changes))
    return await campaign_with_stats(resources, updated)


@router.post(
    "/{campaign_id}/schedule",
    response_model=CampaignOut,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
)
async def schedule_campaign(
    campaign_id: UUID, resources: Resources, caller: CanEdit, body: ScheduleRequest | None = None
) -> CampaignOut:
    """Schedule or re-schedule. A `send_at` without offset is wall time in `timezone`."""
    request = body or ScheduleRequest()
    timezone = request.timezone or resources.settings.default_timezone
    local_send_at = None
    try:
        if request.local_time:
            local_send_at, send_at = resolve_local_send_at(request.send_at)
        else:
            send_at = resolve_send_at(request.send_at, timezone, datetime.now(UTC))
    except UnrepresentableTime as exc:
        raise ProblemError(
            422,
            f"send_at: {exc}",
            kind="validation",
            errors=[FieldError(field="body.send_at", message=str(exc))],
        ) from exc
    with bound_contextvars(campaign_id=str(campaign_id)):
        current = await repository.get_campaign(resources.db, campaign_id)
        if current is not None:
            await refuse_costly_templates(resources, current, where="campaign")
        async with resources.db.acquire() as conn, conn.transaction():
            locked = await repository.get_campaign(conn, campaign_id, lock=True)
            if locked is not None:  # its audience as it is now: a PATCH waits for us
                await _copy_segment_filters(conn, locked)
            window = request.send_window.model_dump() if request.send_window else None
            row = await repository.mark_scheduled(
                conn, campaign_id, send_at, timezone, local_send_at, window
            )
            if row is None:
                await _editable_or_problem(resources, campaign_id, "schedule")
            assert row is not None
            event = CampaignScheduled(
                campaign_id=campaign_id,
                send_at=send_at,
                timezone=timezone,
                revision=row["schedule_revision"],
                local_time=request.local_time,
                local_send_at=local_send_at,
                send_window=request.send_window,
            )
            # Published before the commit: if the broker refuses, the status change rolls
            # back, so a campaign never shows `scheduled` without its event.
            await publish_or_503(resources, Topic.CAMPAIGN_SCHEDULED, campaign_id, event)
            await record_audit(
                conn,
                caller.actor,
                "campaign.schedule",
                Target("campaign", str(campaign_id)),
                {
                    "send_at": send_at.isoformat(),
                    "timezone": timezone,
                    "local_send_at": local_send_at.isoformat() if local_send_at else None,
                    "send_window": window,
                },
            )
        log.info(
            "campaign scheduled",
            send_at=send_at.isoformat(),
            timezone=timezone,
            revision=row["schedule_revision"],
            local_time=request.local_time,
            send_window=window,
        )
    scheduled = await campaign_with_stats(resources, row)
    # After the commit: a slow or failing DNS never holds the transaction or the schedule.
    scheduled.warnings = await schedule_warnings(
        resources.settings, row["from_email"], row["provider"]
    )
    return scheduled


async def _copy_segment_filters(conn: repository.Executor, row: dict[str, Any]) -> None:
    """Copy the filters of the audience's segments, as they are now, into the campaign: the
    scheduler plans from this copy (docs/design.md, "Campaign audiences"). A segment deleted
    since the audience was set is a 422 naming it."""
    if not row["audience"]["segments"] and not row["audience"]["exclude_segments"]:
        return
    _, filters = await audiences.resolve(conn, row["audience"], where="campaign.audience")
    await repository.set_audience_filters(conn, row["id"], filters)


@router.post(
    "/{campaign_id}/unschedule",
    response_model=CampaignOut,
    responses=problem_responses(401, 403, 404, 409, 503),
)
async def unschedule_campaign(
    campaign_id: UUID, resources: Resources, caller: CanEdit
) -> CampaignOut:
    """Back to draft before it starts; the scheduler drops the earlier schedule."""
    with bound_contextvars(campaign_id=str(campaign_id)):
        async with resources.db.acquire() as conn, conn.transaction():
            row = await repository.mark_unscheduled(conn, campaign_id)
            if row is None:
                await _editable_or_problem(resources, campaign_id, "unschedule")
            assert row is not None
            event = CampaignControl(
                campaign_id=campaign_id, action="unschedule", revision=row["schedule_revision"]
            )
            await publish_or_503(resources, Topic.CAMPAIGN_CONTROL, campaign_id, event)
            await record_audit(
                conn, caller.actor, "campaign.unschedule", Target("campaign", str(campaign_id))
            )
        log.info("campaign unscheduled", revision=row["schedule_revision"])
    return await campaign_with_stats(resources, row)


@router.post(
    "/{campaign_id}/duplicate",
    status_code=201,
    response_model=CampaignOut,
    responses=problem_responses(401, 403, 404, 422),
)
async def duplicate_campaign(campaign_id: UUID, resources: Resources, _: CanEdit) -> CampaignOut:
    """A new draft with the same content, list, provider and A/B test, and no schedule."""
    source = await repository.get_campaign(resources.db, campaign_id)
    if source is None:
        raise not_found("campaign", campaign_id)
    copy = {
        **source,
        "name": f"{source['name']} (copy)"[:200],
        "audience_filters": await repository.audience_filters(resources.db, campaign_id),
    }
    async with resources.db.acquire() as conn, conn.transaction():
        row = await repository.insert_campaign(conn, copy)
        # Its A/B test too (settings and variants, a new seed, no decision).
        await ab_repo.copy_test(conn, campaign_id, row["id"], secrets.randbelow(2**62))
    log.info("campaign duplicated", campaign_id=str(row["id"]), source_id=str(campaign_id))
    return await campaign_with_stats(resources, row)


@router.get(
    "/{campaign_id}/preview",
    response_model=PreviewOut,
    responses=problem_responses(401, 404, 422),
)
async def preview_campaign(
    campaign_id: UUID,
    resources: Resources,
    _: CanRead,
    recipient: Annotated[
        str | None,
        Query(max_length=320, description="Email or id of a recipient of the campaign's audience."),
    ] = None,
) -> PreviewOut:
    """The subject, HTML and text as `recipient` would get them (empty merge fields if none)."""
    row = await repository.get_campaign(resources.db, campaign_id)
    if row is None:
        raise not_found("campaign", campaign_id)
    context: dict[str, Any] = {}
    email = None
    if recipient:
        found = await repository.find_recipient(resources.db, row["list_id"], recipient)
        audience = row["audience"]
        if found is None and (len(audience["lists"]) > 1 or audience["segments"]):
            # Its row may be on another list of the audience, or matched by a segment.
            found = await repository.find_recipient(resources.db, None, recipient)
        if found is None:
            raise ProblemError(
                404, f"no recipient {recipient!r} in the campaign's list", kind="not-found"
            )
        email = found["email"]
        context = {**(found["fields"] or {}), "email": email}
    limits = render_limits(resources.settings)
    try:
        return await asyncio.to_thread(_preview, row, context, email, RenderBudget(limits))
    except TemplateTooCostly as exc:
        raise ProblemError(422, f"template too costly: {exc}", kind="template-too-costly") from exc
    except Exception as exc:
        # Templates are user code: they parse, yet may fail for this recipient in any way
        # (a filter on a missing field, a division by zero). That is the user's to fix.
        raise ProblemError(
            422, f"the template fails to render for this recipient: {exc}", kind="render-error"
        ) from exc


def _preview(
    row: dict[str, Any], context: dict[str, Any], email: str | None, budget: RenderBudget
) -> PreviewOut:
    # Off the event loop (user code); subject, HTML and text share one message's budget.
    return PreviewOut(
        recipient=email,
        subject=render(row["subject"], context, html=False, budget=budget),
        html=render(row["html"], context, html=True, budget=budget),
        text=render(row["text"], context, html=False, budget=budget) if row["text"] else None,
    )


async def publish_or_503(
    resources: ApiResources, topic: Topic, campaign_id: UUID, event: Any
) -> None:
    try:
        await resources.events.send(topic, str(campaign_id), event)
    except KafkaError as exc:
        raise ProblemError(503, "the broker is unavailable; nothing changed, retry") from exc


# ----- the delivery log and the send rate, as the tracker records them -----


@router.get(
    "/{campaign_id}/deliveries",
    response_model=Page[DeliveryOut],
    responses=problem_responses(401, 404, 422),
)
async def campaign_deliveries(
    campaign_id: UUID,
    resources: Resources,
    _: CanRead,
    status: Annotated[
        str | None,
        Query(
            max_length=40,
            description="One of: " + ", ".join(read_models.DELIVERY_FILTERS) + ".",
        ),
    ] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> Page[DeliveryOut]:
    """The campaign's delivery log in recipient order, optionally only one status."""
    if status is not None and status not in read_models.DELIVERY_FILTERS:
        message = f"unknown status; one of {', '.join(read_models.DELIVERY_FILTERS)}"
        raise ProblemError(
            422,
            f"status: {message}",
            kind="validation",
            errors=[FieldError(field="query.status", message=message)],
        )
    await _require_campaign(resources, campaign_id)
    try:
        page = await read_models.delivery_page(
            resources.db, campaign_id, status=status, cursor=cursor, limit=limit
        )
    except ValueError as exc:  # the status is checked above: the cursor is the fault
        raise bad_cursor(BadCursor("cursor is not one this API returned")) from exc
    return Page[DeliveryOut](
        items=[DeliveryOut(**item) for item in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{campaign_id}/timeline",
    response_model=TimelineOut,
    responses=problem_responses(401, 404, 422),
)
async def campaign_timeline(
    campaign_id: UUID,
    resources: Resources,
    _: CanRead,
    bucket_seconds: Annotated[
        int, Query(ge=1, le=3600, description="Width of each time bucket.")
    ] = 1,
) -> TimelineOut:
    """Sends per second over the campaign's life, in tumbling windows of `bucket_seconds`;
    each batch counts when its dispatcher finished it."""
    await _require_campaign(resources, campaign_id)
    points = await read_models.timeline(resources.db, campaign_id, bucket_seconds)
    return TimelineOut(
        campaign_id=campaign_id,
        bucket_seconds=bucket_seconds,
        points=[TimelinePoint(**point) for point in points],
    )


async def _require_campaign(resources: ApiResources, campaign_id: UUID) -> None:
    if not await repository.campaign_exists(resources.db, campaign_id):
        raise not_found("campaign", campaign_id)


@router.delete(
    "/{campaign_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def delete_campaign(campaign_id: UUID, resources: Resources, _: CanEdit) -> Response:
    """Delete a draft. A scheduled campaign must be unscheduled first; one that started is
    kept for its stats and its unsubscribe links."""
    if not await deletions_repo.delete_draft_campaign(resources.db, campaign_id):
        row = await repository.get_campaign(resources.db, campaign_id)
        if row is None:
            raise not_found("campaign", campaign_id)
        reason = why_campaign_is_kept(row["status"]) or "it changed meanwhile; retry"
        raise ProblemError(409, f"cannot delete: {reason}", kind="campaign-state")
    log.info("campaign deleted", campaign_id=str(campaign_id))
    return Response(status_code=204)
