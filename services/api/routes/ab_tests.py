"""A/B tests of a campaign (issue 17 item 1): set (or replace) while the campaign is a
draft or scheduled, read with per-variant stats, override the wait or the metric while
undecided, and pick the winner by hand before the wait is over. Every write is audited."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Response

from libs.common.logging import bound_contextvars, get_logger
from libs.stats.ab import variant_report
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import ab_repo
from services.api.ab_schemas import (
    AbTestIn,
    AbTestOut,
    AbTestUpdate,
    VariantOut,
    WinnerIn,
    variant_names,
)
from services.api.audit import Target, record_audit
from services.api.deps import ApiResources, CanEdit, CanRead, Resources
from services.api.repository import Executor
from services.api.routes.campaigns import check_templates, refuse_costly_templates
from services.api.routes.common import not_found

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])

# A test's winner can be chosen by hand while its campaign sends (or is paused).
_RUNNING = ("in_progress", "paused")


async def _out(resources: ApiResources, test: dict[str, Any]) -> AbTestOut:
    campaign_id = test["campaign_id"]
    variants = await ab_repo.variants_of(resources.db, campaign_id)
    counters = await ab_repo.variant_counters(resources.db, campaign_id)
    started: datetime | None = test["test_started_at"]
    return AbTestOut(
        campaign_id=str(campaign_id),
        test_share=test["test_share"],
        seed=test["seed"],
        wait_seconds=test["wait_seconds"],
        metric=test["metric"],
        variants=[VariantOut(**v) for v in variants],
        test_started_at=started,
        decide_after=(
            started + timedelta(seconds=test["wait_seconds"])
            if started is not None and test["metric"] != "manual"
            else None
        ),
        winner=test["winner"],
        decided_at=test["decided_at"],
        decided_by=test["decided_by"],
        decision_reason=test["decision_reason"],
        stats=variant_report(counters),
    )


async def _test_or_404(resources: ApiResources, campaign_id: UUID) -> dict[str, Any]:
    test = await ab_repo.get_test(resources.db, campaign_id)
    if test is None:
        raise ProblemError(404, f"campaign {campaign_id} has no A/B test", kind="not-found")
    return test


async def _lock_editable(conn: Executor, campaign_id: UUID, doing: str) -> None:
    """Lock the campaign's row; 404 if there is none, 409 once it is past scheduled."""
    campaign = await ab_repo.lock_campaign(conn, campaign_id)
    if campaign is None:
        raise not_found("campaign", campaign_id)
    if not ab_repo.editable(campaign["status"]):
        raise ProblemError(
            409, f"cannot {doing} a campaign that is {campaign['status']}", kind="campaign-state"
        )


@router.put(
    "/{campaign_id}/ab",
    response_model=AbTestOut,
    responses=problem_responses(401, 403, 404, 409, 413, 422),
)
async def set_ab_test(
    campaign_id: UUID, body: AbTestIn, resources: Resources, caller: CanEdit
) -> AbTestOut:
    """Make the campaign an A/B test, or replace its test, while it is draft or scheduled."""
    names = variant_names(len(body.variants))
    variants = [
        (n, v.model_dump(exclude_none=True)) for n, v in zip(names, body.variants, strict=True)
    ]
    for index, (_, values) in enumerate(variants):
        try:
            check_templates(values)
            await refuse_costly_templates(resources, values, where=f"body.variants.{index}")
        except ProblemError as exc:
            # Name the variant in the fields: `body.subject` -> `body.variants.<i>.subject`.
            for error in exc.errors or []:
                if error.field.startswith("body.") and not error.field.startswith("body.variants"):
                    error.field = f"body.variants.{index}.{error.field[5:]}"
            raise
    seed = body.seed if body.seed is not None else secrets.randbelow(2**62)
    settings = {**body.model_dump(exclude={"variants", "seed"}), "seed": seed}
    with bound_contextvars(campaign_id=str(campaign_id)):
        async with resources.db.acquire() as conn, conn.transaction():
            await _lock_editable(conn, campaign_id, "set an A/B test on")
            await ab_repo.replace_test(conn, campaign_id, settings, variants)
            await record_audit(
                conn,
                caller.actor,
                "campaign.ab_set",
                Target("campaign", str(campaign_id)),
                {**settings, "variants": names},
            )
        log.info("a/b test set", variants=len(names), **settings)
    return await _out(resources, await _test_or_404(resources, campaign_id))


@router.get(
    "/{campaign_id}/ab", response_model=AbTestOut, responses=problem_responses(401, 404, 422)
)
async def get_ab_test(campaign_id: UUID, resources: Resources, _: CanRead) -> AbTestOut:
    """The test, its decision, and the stats of each variant of the test group."""
    return await _out(resources, await _test_or_404(resources, campaign_id))


@router.patch(
    "/{campaign_id}/ab",
    response_model=AbTestOut,
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def update_ab_test(
    campaign_id: UUID, body: AbTestUpdate, resources: Resources, caller: CanEdit
) -> AbTestOut:
    """Override the wait or the metric until a winner is chosen (also while it sends)."""
    changes = body.model_dump(exclude_none=True)
    with bound_contextvars(campaign_id=str(campaign_id)):
        async with resources.db.acquire() as conn, conn.transaction():
            test = await ab_repo.get_test(conn, campaign_id)
            if test is None:
                raise ProblemError(404, f"campaign {campaign_id} has no A/B test", kind="not-found")
            updated = await ab_repo.update_undecided(conn, campaign_id, changes)
            if updated is None:
                raise ProblemError(
                    409, f"the A/B test was decided already: {test['winner']}", kind="ab-decided"
                )
            await record_audit(
                conn,
                caller.actor,
                "campaign.ab_update",
                Target("campaign", str(campaign_id)),
                changes,
            )
        log.info("a/b test changed", **changes)
    return await _out(resources, updated)


@router.delete(
    "/{campaign_id}/ab", status_code=204, responses=problem_responses(401, 403, 404, 409, 422)
)
async def delete_ab_test(campaign_id: UUID, resources: Resources, caller: CanEdit) -> Response:
    """Back to a plain campaign, while it is draft or scheduled."""
    async with resources.db.acquire() as conn, conn.transaction():
        await _lock_editable(conn, campaign_id, "remove the A/B test of")
        if not await ab_repo.delete_test(conn, campaign_id):
            raise ProblemError(404, f"campaign {campaign_id} has no A/B test", kind="not-found")
        await record_audit(
            conn, caller.actor, "campaign.ab_delete", Target("campaign", str(campaign_id))
        )
    return Response(status_code=204)


@router.post(
    "/{campaign_id}/ab/winner",
    response_model=AbTestOut,
    responses=problem_responses(401, 403, 404, 409, 422),
)
async def choose_ab_winner(
    campaign_id: UUID, body: WinnerIn, resources: Resources, caller: CanEdit
) -> AbTestOut:
    """Pick the winner by hand, before the wait is over (or for a `manual` test). Once: a
    test already decided (by the scheduler or another admin) answers 409. The rest of the
    audience then gets the winner's content."""
    with bound_contextvars(campaign_id=str(campaign_id)):
        async with resources.db.acquire() as conn, conn.transaction():
            status = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
            if status is None:
                raise not_found("campaign", campaign_id)
            test = await ab_repo.get_test(conn, campaign_id)
            if test is None:
                raise ProblemError(404, f"campaign {campaign_id} has no A/B test", kind="not-found")
            names = [v["variant"] for v in await ab_repo.variants_of(conn, campaign_id)]
            if body.variant not in names:
                raise ProblemError(
                    422,
                    f"variant: the test has variants {', '.join(names)}",
                    kind="validation",
                    errors=[FieldError(field="body.variant", message="no such variant")],
                )
            if status not in _RUNNING or test["test_started_at"] is None:
                raise ProblemError(
                    409,
                    f"a winner is chosen while the test runs; the campaign is {status}",
                    kind="campaign-state",
                )
            actor = caller.actor
            decided = await ab_repo.choose_winner(
                conn,
                campaign_id,
                body.variant,
                f"{actor.kind}:{actor.name or actor.id}",
                datetime.now(UTC),
            )
            if decided is None:
                raise ProblemError(
                    409, f"the A/B test was decided already: {test['winner']}", kind="ab-decided"
                )
            await record_audit(
                conn,
                actor,
                "campaign.ab_winner",
                Target("campaign", str(campaign_id)),
                {"variant": body.variant},
            )
        log.info("a/b winner chosen by hand", winner=body.variant)
    return await _out(resources, decided)
