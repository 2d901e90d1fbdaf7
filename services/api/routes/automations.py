"""Automations: "when a trigger fires, run these steps" (issue 18 item 2).

services/automations runs them; here they are created, edited (each edit is a new version;
runs in flight keep theirs), paused and resumed, and their runs and per-step stats read.
Every write is audited."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query

from libs.automations.definition import Definition
from libs.common.logging import get_logger
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import automations_repo
from services.api.audit import Target, record_audit
from services.api.automation_schemas import (
    AutomationCreate,
    AutomationOut,
    AutomationUpdate,
    RunOut,
    RunPage,
    StepStats,
)
from services.api.deps import ApiResources, CanEdit, CanRead, Resources
from services.api.pagination import BadCursor
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor, not_found
from services.api.schemas import Page

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/automations", tags=["automations"])

RunId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The run's id.")]


async def _check_references(resources: ApiResources, definition: Definition) -> None:
    """422 naming the node when a send step's template (version) or the trigger's list does
    not exist."""
    errors: list[FieldError] = []
    for i, template_id, version in definition.template_ids():
        found = await resources.db.fetchval(
            "SELECT 1 FROM templates t JOIN template_versions v ON v.template_id = t.id"
            " AND v.version = coalesce($2, t.latest_version) WHERE t.id = $1",
            template_id,
            version,
        )
        if found is None:
            field = "template_version" if version is not None else "template_id"
            errors.append(
                FieldError(
                    field=f"body.definition.steps.{i}.{field}",
                    message=f"no such template (version): {template_id}",
                )
            )
    list_id = getattr(definition.trigger, "list_id", None)
    if list_id is not None and not await resources.db.fetchval(
        "SELECT 1 FROM lists WHERE id = $1", list_id
    ):
        errors.append(FieldError(field="body.definition.trigger.list_id", message="no such list"))
    if errors:
        raise ProblemError(
            422, f"{errors[0].field}: {errors[0].message}", kind="validation", errors=errors
        )


async def _shown(resources: ApiResources, row: dict[str, object]) -> AutomationOut:
    automation_id = row["id"]
    assert isinstance(automation_id, UUID)
    stats = await automations_repo.step_stats(resources.db, automation_id)
    return AutomationOut(
        **row,
        runs=await automations_repo.run_counts(resources.db, automation_id),
        steps=[StepStats(**s) for s in stats],
    )


@router.post(
    "", status_code=201, response_model=AutomationOut, responses=problem_responses(401, 403, 422)
)
async def create_automation(
    body: AutomationCreate, resources: Resources, caller: CanEdit
) -> AutomationOut:
    """Create an automation (version 1). It starts runs for triggers that fire from now on."""
    await _check_references(resources, body.definition)
    async with resources.db.acquire() as conn, conn.transaction():
        row = await automations_repo.insert(conn, body.name, body.definition, body.status)
        await record_audit(
            conn, caller.actor, "automation.create", Target("automation", str(row["id"])),
            {"name": body.name, "trigger": body.definition.trigger.kind, "status": body.status},
        )  # fmt: skip
    log.info("automation created", automation_id=str(row["id"]))
    return await _shown(resources, row)


@router.get("", response_model=Page[AutomationOut], responses=problem_responses(401, 422))
async def list_automations(
    resources: Resources, _: CanRead, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
) -> Page[AutomationOut]:
    """Newest first, without stats (GET one for them)."""
    try:
        rows, next_cursor = await automations_repo.page(resources.db, cursor, limit)
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[AutomationOut](items=[AutomationOut(**r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{automation_id}", response_model=AutomationOut, responses=problem_responses(401, 404, 422)
)
async def get_automation(automation_id: UUID, resources: Resources, _: CanRead) -> AutomationOut:
    """The automation, its runs by status, and per send step (of each version): sent,
    opened, clicked, reached the goal."""
    row = await automations_repo.get(resources.db, automation_id)
    if row is None:
        raise not_found("automation", automation_id)
    return await _shown(resources, row)


@router.patch(
    "/{automation_id}",
    response_model=AutomationOut,
    responses=problem_responses(401, 403, 404, 422),
)
async def update_automation(
    automation_id: UUID, body: AutomationUpdate, resources: Resources, caller: CanEdit
) -> AutomationOut:
    """Rename it, or give a new definition: a new version, which new runs start on. Runs
    in flight finish on the version they started on."""
    if body.definition is not None:
        await _check_references(resources, body.definition)
    async with resources.db.acquire() as conn, conn.transaction():
        row = await automations_repo.update(conn, automation_id, body.name, body.definition)
        if row is None:
            raise not_found("automation", automation_id)
        await record_audit(
            conn, caller.actor, "automation.update", Target("automation", str(automation_id)),
            {"name": body.name, "version": row["version"]},
        )  # fmt: skip
    log.info("automation updated", automation_id=str(automation_id), version=row["version"])
    return await _shown(resources, row)


async def _set_status(
    resources: ApiResources, caller: CanEdit, automation_id: UUID, status: str
) -> AutomationOut:
    async with resources.db.acquire() as conn, conn.transaction():
        row = await automations_repo.set_status(conn, automation_id, status)
        if row is None:
            raise not_found("automation", automation_id)
        verb = "pause" if status == "paused" else "resume"
        await record_audit(
            conn, caller.actor, f"automation.{verb}", Target("automation", str(automation_id))
        )
    log.info("automation status set", automation_id=str(automation_id), status=status)
    return await _shown(resources, row)


@router.post(
    "/{automation_id}/pause",
    response_model=AutomationOut,
    responses=problem_responses(401, 403, 404, 422),
)
async def pause_automation(
    automation_id: UUID, resources: Resources, caller: CanEdit
) -> AutomationOut:
    """No step runs while paused (timers that fall due wait); triggers still enrol."""
    return await _set_status(resources, caller, automation_id, "paused")


@router.post(
    "/{automation_id}/resume",
    response_model=AutomationOut,
    responses=problem_responses(401, 403, 404, 422),
)
async def resume_automation(
    automation_id: UUID, resources: Resources, caller: CanEdit
) -> AutomationOut:
    """Steps due meanwhile run now; later ones at their time."""
    return await _set_status(resources, caller, automation_id, "active")


@router.get(
    "/{automation_id}/runs", response_model=RunPage, responses=problem_responses(401, 404, 422)
)
async def list_runs(
    automation_id: UUID,
    resources: Resources,
    _: CanRead,
    status: Annotated[Literal["active", "completed", "stopped"] | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> RunPage:
    """Its runs, oldest first."""
    if await automations_repo.get(resources.db, automation_id) is None:
        raise not_found("automation", automation_id)
    try:
        after = int(cursor) if cursor else 0
        if not 0 <= after < 2**63:
            raise ValueError(after)
    except ValueError as exc:
        raise bad_cursor(BadCursor("cursor is not one this API returned")) from exc
    rows = await automations_repo.page_runs(resources.db, automation_id, status, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return RunPage(
        items=[RunOut(**r) for r in rows], next_cursor=str(rows[-1]["id"]) if more else None
    )


@router.get(
    "/{automation_id}/runs/{run_id}",
    response_model=RunOut,
    responses=problem_responses(401, 404, 422),
)
async def get_run(automation_id: UUID, run_id: RunId, resources: Resources, _: CanRead) -> RunOut:
    """One run with each step it did: when, what came of it, the message it sent."""
    run = await automations_repo.get_run(resources.db, automation_id, run_id)
    if run is None:
        raise ProblemError(404, f"no run {run_id} of automation {automation_id}", kind="not-found")
    return RunOut(**run)
