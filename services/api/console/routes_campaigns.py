"""Campaign pages: dashboard, list, editor, detail with live progress, scheduling, control."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo, available_timezones

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError

from libs.common.events import SendWindow
from libs.stats import read_models
from libs.stats.ab import variant_report
from libs.web.problems import ProblemError
from services.api import ab_repo, repository
from services.api.ab_schemas import WinnerIn
from services.api.campaign_test_schemas import SendTestRequest
from services.api.console import queries
from services.api.console.auth import EditorPost, Viewer
from services.api.console.delivery_export import delivery_csv
from services.api.console.forms import field_errors_from_problem, field_errors_from_validation
from services.api.console.web import STATUS_LABELS, ConsoleRoute, page_or_first, render
from services.api.routes import ab_tests, campaign_control, campaign_test_sends, campaigns
from services.api.scheduling import (
    UnknownTimezone,
    UnrepresentableTime,
    resolve_local_send_at,
    resolve_send_at,
    zone,
)
from services.api.schemas import CampaignCreate, CampaignUpdate, ScheduleRequest

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 25
ZONES = sorted(available_timezones())


@router.get("")
async def dashboard(request: Request, session: Viewer) -> Response:
    db = request.app.state.resources.db
    running = await queries.running_campaigns(db)
    progress = await queries.progress_by_campaign(db, [c["id"] for c in running])
    midnight = datetime.combine(
        datetime.now(ZoneInfo(session.timezone)).date(), time(), ZoneInfo(session.timezone)
    )
    return render(
        request,
        "dashboard.html",
        session,
        running=running,
        progress=progress,
        today=await queries.today_totals(db, midnight),
        failures=await queries.recent_failures(db),
    )


@router.get("/campaigns")
async def campaign_list(
    request: Request,
    session: Viewer,
    status: Annotated[str | None, Query(max_length=20)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    db = request.app.state.resources.db
    status = status if status in STATUS_LABELS else None
    name = (q or "").strip() or None
    rows, next_cursor = await page_or_first(
        lambda c: repository.page_campaigns(db, status, c, PAGE_SIZE, name_contains=name), cursor
    )
    progress = await queries.progress_by_campaign(db, [r["id"] for r in rows])
    template = "_campaign_rows.html" if request.headers.get("hx-request") else "campaigns.html"
    return render(
        request,
        template,
        session,
        campaigns=rows,
        progress=progress,
        status=status,
        q=q or "",
        next_cursor=next_cursor,
    )


CAMPAIGN_FIELDS = (
    "name",
    "subject",
    "from_email",
    "from_name",
    "list_id",
    "template_id",
    "html",
    "text",
    "max_per_hour",
)
# What an edit may change (content, once copied from a template, is the campaign's own).
EDITABLE = ("name", "subject", "from_email", "from_name", "list_id", "html", "text", "max_per_hour")
OPTIONAL = ("from_name", "text", "max_per_hour")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _cap(value: str) -> int | str | None:
    """The rate cap as typed: empty is no cap; digits a number; anything else is left as
    text for the schema to refuse (and the form to show why)."""
    value = value.strip().replace(",", "").replace(" ", "")
    if not value:
        return None
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 12 else value


async def _campaign_form(request: Request) -> dict[str, str]:
    """The editor's fields as typed (already parsed by the CSRF check; each is bounded by
    the schema below and the whole body by the API's body limit)."""
    form = await request.form()
    values = {name: str(form.get(name, "")) for name in CAMPAIGN_FIELDS}
    # A checkbox is sent only when ticked; the editor always shows it.
    values["tracking"] = "on" if form.get("tracking") == "on" else ""
    return values


async def _editor(
    request: Request,
    session: Viewer,
    values: dict[str, Any],
    errors: dict[str, str],
    campaign: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    db = request.app.state.resources.db
    return render(
        request,
        "campaign_new.html",
        session,
        status_code,
        values=values,
        errors=errors,
        campaign=campaign,
        lists=await queries.list_names(db),
        templates=await queries.template_names(db),
    )


def _errors_of(exc: Exception) -> dict[str, str]:
    if isinstance(exc, ValidationError):
        return field_errors_from_validation(exc)
    if isinstance(exc, ProblemError) and exc.status in (409, 422):
        return field_errors_from_problem(exc)
    raise exc


@router.get("/campaigns/new")
async def new_campaign_form(request: Request, session: Viewer) -> Response:
    return await _editor(request, session, {}, {})


@router.get("/merge-fields")
async def merge_fields(
    request: Request, session: Viewer, list_id: Annotated[str, Query(max_length=40)] = ""
) -> Response:
    """The merge-field picker of the editor: the chosen list's columns."""
    try:
        columns = await queries.list_columns(request.app.state.resources.db, UUID(list_id))
    except ValueError:
        columns = []
    return render(request, "_merge_fields.html", session, columns=columns)


@router.post("/campaigns/new")
async def create_campaign(request: Request, session: EditorPost) -> Response:
    values = await _campaign_form(request)
    # Empty fields are "not given"; with a template, its content replaces subject and html.
    given: dict[str, Any] = {k: v for k, v in values.items() if v.strip()}
    if "template_id" in given:
        for part in ("subject", "html", "text"):
            given.pop(part, None)
    given["tracking"] = values["tracking"] == "on"
    if "max_per_hour" in given:
        given["max_per_hour"] = _cap(given["max_per_hour"])
    try:
        body = CampaignCreate.model_validate(given)
        created = await campaigns.create_campaign(
            body, request.app.state.resources, session.as_caller()
        )
    except (ValidationError, ProblemError) as exc:
        errors = _errors_of(exc)
        if "audience" in errors:  # no list chosen: the form's audience is its list
            errors.setdefault("list_id", errors.pop("audience"))
        return await _editor(request, session, values, errors, status_code=422)
    return RedirectResponse(f"/console/campaigns/{created.id}", status_code=303)


@router.get("/campaigns/{campaign_id}/edit")
async def edit_campaign_form(request: Request, session: Viewer, campaign_id: UUID) -> Response:
    row = await _campaign_or_404(request, campaign_id)
    values = {k: "" if row.get(k) is None else str(row[k]) for k in EDITABLE}
    values["tracking"] = "on" if row["tracking"] else ""
    return await _editor(request, session, values, {}, campaign=row)


@router.post("/campaigns/{campaign_id}/edit")
async def edit_campaign(request: Request, session: EditorPost, campaign_id: UUID) -> Response:
    """Only while draft or scheduled (the REST rule: a 409 otherwise, shown on the form)."""
    row = await _campaign_or_404(request, campaign_id)
    values = await _campaign_form(request)
    changes: dict[str, Any] = {k: values[k] for k in EDITABLE}
    for name in OPTIONAL:
        changes[name] = changes[name] if changes[name].strip() else None
    changes["tracking"] = values["tracking"] == "on"
    if changes["list_id"] in ("", str(row["list_id"] or "")):
        # Unchanged (or an audience the form cannot show as one list): a list_id would
        # replace the whole audience by that one list.
        del changes["list_id"]
    if (cap := _cap(values["max_per_hour"])) != row["max_per_hour"]:
        changes["max_per_hour"] = cap  # only a change is audited as one
    else:
        changes.pop("max_per_hour", None)
    try:
        body = CampaignUpdate.model_validate(changes)
        await campaigns.update_campaign(
            campaign_id, body, request.app.state.resources, session.as_caller()
        )
    except (ValidationError, ProblemError) as exc:
        errors = _errors_of(exc)
        return await _editor(request, session, values, errors, campaign=row, status_code=422)
    return RedirectResponse(f"/console/campaigns/{campaign_id}", status_code=303)


async def _campaign_or_404(request: Request, campaign_id: UUID) -> dict[str, Any]:
    row = await repository.get_campaign(request.app.state.resources.db, campaign_id)
    if row is None:
        raise ProblemError(404, "There is no such campaign.")
    return row


async def _ab_view(db: Any, campaign_id: UUID) -> dict[str, Any] | None:
    """The campaign's A/B test for its page: settings, decision, per-variant stats."""
    test = await ab_repo.get_test(db, campaign_id)
    if test is None:
        return None
    variants = {v["variant"]: v for v in await ab_repo.variants_of(db, campaign_id)}
    report = variant_report(await ab_repo.variant_counters(db, campaign_id))
    metric = "click" if test["metric"] == "click" else "open"
    rows = [
        {**r, "subject": variants.get(r["variant"], {}).get("subject"),
         "versus": r["against_leader"][metric]}
        for r in report["variants"]
    ]  # fmt: skip
    return {**test, "rows": rows, "compared_by": metric, "leader": report["leaders"][metric]}


@router.get("/campaigns/{campaign_id}")
async def campaign_detail(
    request: Request,
    session: Viewer,
    campaign_id: UUID,
    delivery_status: Annotated[str | None, Query(max_length=40)] = None,
    address: Annotated[str | None, Query(max_length=320)] = None,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    db = request.app.state.resources.db
    row = await _campaign_or_404(request, campaign_id)
    progress = (await queries.progress_by_campaign(db, [campaign_id]))[campaign_id]
    if delivery_status not in read_models.DELIVERY_FILTERS:
        delivery_status = None
    if address and address.strip():
        found = await queries.delivery_for_email(db, campaign_id, row["audience"], address)
        deliveries = read_models.DeliveryPage(found, None)
    else:
        try:
            deliveries = await read_models.delivery_page(
                db, campaign_id, status=delivery_status, cursor=cursor, limit=PAGE_SIZE
            )
        except ValueError:
            deliveries = await read_models.delivery_page(db, campaign_id, limit=PAGE_SIZE)
    ab = await _ab_view(db, campaign_id)
    return render(
        request,
        "campaign.html",
        session,
        campaign=row,
        ab=ab,
        audience_names=await queries.audience_names(db, row["audience"]),
        audience_planned=await repository.audience_plan(db, campaign_id),
        zone_plan=await queries.zones_of(db, row),
        days=DAYS,
        progress=progress,
        rate=None,
        deliveries=deliveries,
        delivery_status=delivery_status,
        address=address or "",
        delivery_filters=list(read_models.DELIVERY_FILTERS),
        zones=ZONES,
        today=datetime.now(ZoneInfo(session.timezone)).date().isoformat(),
    )


@router.get("/campaigns/{campaign_id}/deliveries.csv")
async def delivery_log_csv(
    request: Request,
    session: Viewer,
    campaign_id: UUID,
    delivery_status: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    await _campaign_or_404(request, campaign_id)
    status = delivery_status if delivery_status in read_models.DELIVERY_FILTERS else None
    return StreamingResponse(
        delivery_csv(request.app.state.resources.db, campaign_id, status),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="campaign-{campaign_id}-deliveries.csv"'
        },
    )


@router.get("/campaigns/{campaign_id}/timeline.json")
async def campaign_timeline(request: Request, session: Viewer, campaign_id: UUID) -> Response:
    points = await read_models.timeline(request.app.state.resources.db, campaign_id, 1)
    return JSONResponse(
        {
            "t": [p["at"].timestamp() for p in points],
            "per_second": [p["per_second"] for p in points],
        }
    )


@router.get("/campaigns/{campaign_id}/preview")
async def campaign_preview(
    request: Request,
    session: Viewer,
    campaign_id: UUID,
    recipient: Annotated[str | None, Query(max_length=320)] = None,
) -> Response:
    """The rendered message for one recipient, shown in a sandboxed iframe (srcdoc)."""
    resources = request.app.state.resources
    error = None
    preview = None
    try:
        preview = await campaigns.preview_campaign(
            campaign_id, resources, session.as_caller(), recipient or None
        )
    except ProblemError as exc:
        error = exc.detail
    return render(request, "_preview.html", session, preview=preview, error=error)


@router.post("/campaigns/{campaign_id}/test")
async def test_send(
    request: Request,
    session: EditorPost,
    campaign_id: UUID,
    emails: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    """Send the campaign now to a few addresses (comma or space separated)."""
    addresses = [a for a in emails.replace(",", " ").split() if a]
    try:
        body = SendTestRequest(emails=addresses)
        sent = await campaign_test_sends.send_test_mail(
            campaign_id, body, request.app.state.resources, session.as_caller()
        )
    except ValidationError:
        return render(request, "_test_send.html", session, error="Give one to ten addresses.")
    except ProblemError as exc:
        return render(request, "_test_send.html", session, error=exc.detail)
    return render(request, "_test_send.html", session, results=sent.results)


def _wall(day: str, at: str) -> datetime | None:
    try:
        return datetime.combine(date.fromisoformat(day), time.fromisoformat(at or "00:00"))
    except ValueError:
        return None


def _when(
    day: str, at: str, timezone: str, now: datetime, local: bool = False
) -> tuple[datetime | None, str | None]:
    """The UTC instant of a date + time in an IANA zone (with `local`: when the first zone
    reaches it, UTC+14), or an error to show."""
    try:
        zone(timezone)
    except UnknownTimezone as exc:
        return None, str(exc)
    if not day and not at:
        if local:
            return None, "Give a date and a time to send at in each recipient's zone."
        return now, None
    wall = _wall(day, at)
    if wall is None:
        return None, "Give a date (YYYY-MM-DD) and a time (HH:MM)."
    try:
        if local:
            return resolve_local_send_at(wall)[1], None
        return resolve_send_at(wall, timezone, now), None
    except UnrepresentableTime as exc:
        return None, str(exc)


@router.get("/schedule-preview")
async def schedule_preview(
    request: Request,
    session: Viewer,
    day: Annotated[str, Query(max_length=20)] = "",
    at: Annotated[str, Query(max_length=20)] = "",
    timezone: Annotated[str, Query(max_length=64)] = "UTC",
    local_time: Annotated[bool, Query()] = False,
) -> Response:
    """What the chosen date, time and zone mean: the UTC instant and the person's own time."""
    instant, error = _when(day, at, timezone, datetime.now(UTC), local_time)
    return render(
        request,
        "_schedule_preview.html",
        session,
        instant=instant,
        error=error,
        local_time=local_time,
        wall=f"{day} {at or '00:00'}",
        zone=timezone,
    )


def _window(start: str, end: str, days: list[str]) -> SendWindow | None:
    """The send window of the schedule form (None when neither time is given); raises
    ValueError with what is wrong."""
    if not start.strip() and not end.strip():
        return None
    try:
        return SendWindow(start=start.strip(), end=end.strip(), days=days or list(DAYS))
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"Send window: {message}") from None


@router.post("/campaigns/{campaign_id}/schedule")
async def schedule(
    request: Request,
    session: EditorPost,
    campaign_id: UUID,
    day: Annotated[str, Form(max_length=20)] = "",
    at: Annotated[str, Form(max_length=20)] = "",
    timezone: Annotated[str, Form(max_length=64)] = "UTC",
    local_time: Annotated[bool, Form()] = False,
    window_start: Annotated[str, Form(max_length=5)] = "",
    window_end: Annotated[str, Form(max_length=5)] = "",
    window_days: Annotated[list[str] | None, Form(max_length=7)] = None,
) -> Response:
    resources = request.app.state.resources
    instant, error = _when(day, at, timezone, datetime.now(UTC), local_time)
    try:
        window = _window(window_start, window_end, window_days or [])
    except ValueError as exc:
        error = error or str(exc)
    if error is None and instant is not None:
        if local_time:
            body = ScheduleRequest(
                send_at=_wall(day, at), timezone=timezone, local_time=True, send_window=window
            )
        else:
            body = ScheduleRequest(
                send_at=instant if day or at else None, timezone=timezone, send_window=window
            )
        await campaigns.schedule_campaign(campaign_id, resources, session.as_caller(), body)
        return RedirectResponse(f"/console/campaigns/{campaign_id}", status_code=303)
    return render(request, "error.html", session, 422, message=error)


@router.post("/campaigns/{campaign_id}/ab/winner")
async def choose_winner(
    request: Request,
    session: EditorPost,
    campaign_id: UUID,
    variant: Annotated[str, Form(max_length=1)],
) -> Response:
    """Pick an A/B test's winner by hand (the API's rules: once, while the test runs)."""
    try:
        body = WinnerIn(variant=variant)
    except ValidationError:
        return render(request, "error.html", session, 422, message="There is no such variant.")
    await ab_tests.choose_ab_winner(
        campaign_id, body, request.app.state.resources, session.as_caller()
    )
    return RedirectResponse(f"/console/campaigns/{campaign_id}", status_code=303)


@router.post("/campaigns/{campaign_id}/rate-cap")
async def rate_cap(
    request: Request,
    session: EditorPost,
    campaign_id: UUID,
    max_per_hour: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Set or clear the campaign's rate cap, also while it sends (issue 17 item 4)."""
    resources = request.app.state.resources
    error = None
    try:
        body = CampaignUpdate.model_validate({"max_per_hour": _cap(max_per_hour)})
        await campaigns.update_campaign(campaign_id, body, resources, session.as_caller())
    except (ValidationError, ProblemError) as exc:
        error = _errors_of(exc).get("max_per_hour") or next(iter(_errors_of(exc).values()))
    row = await _campaign_or_404(request, campaign_id)
    if request.headers.get("hx-request") != "true":
        if error is not None:
            return render(request, "error.html", session, 422, message=error)
        return RedirectResponse(f"/console/campaigns/{campaign_id}", status_code=303)
    return render(
        request,
        "_rate_cap.html",
        session,
        campaign=row,
        typed=max_per_hour if error else None,
        error=error,
        saved=error is None,
    )


_ACTIONS = {
    "pause": campaign_control.pause_campaign,
    "resume": campaign_control.resume_campaign,
    "cancel": campaign_control.cancel_campaign,
    "unschedule": campaigns.unschedule_campaign,
}


@router.post("/campaigns/{campaign_id}/{action}")
async def control(
    request: Request, session: EditorPost, campaign_id: UUID, action: str
) -> Response:
    resources = request.app.state.resources
    if action == "duplicate":
        copy = await campaigns.duplicate_campaign(campaign_id, resources, session.as_caller())
        return RedirectResponse(f"/console/campaigns/{copy.id}", status_code=303)
    act = _ACTIONS.get(action)
    if act is None:
        raise ProblemError(404, "There is no such action.")
    await act(campaign_id, resources, session.as_caller())
    return RedirectResponse(f"/console/campaigns/{campaign_id}", status_code=303)
