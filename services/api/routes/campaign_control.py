"""Pause, resume and cancel a campaign.

The status changes with a compare-and-set under a row lock (rules in
`libs/common/campaign_control.py`); `campaign.control` is published before the commit, so
a campaign never shows a state whose event was lost. Dispatchers act within 2 s (status
cache + the event); the scheduler re-emits handed-back batches on resume and cancel.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from libs.common.campaign_control import ControlAction, ControlRefused, transition
from libs.common.events import CampaignControl, Topic
from libs.common.logging import bound_contextvars, get_logger
from libs.web.problems import ProblemError, problem_responses
from services.api.audit import Target, record_audit
from services.api.deps import ApiResources, Caller, CanEdit, Resources
from services.api.repository import CAMPAIGN_COLUMNS
from services.api.routes.campaigns import campaign_with_stats, publish_or_503
from services.api.routes.common import not_found
from services.api.schemas import CampaignOut

log = get_logger(__name__)

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])


async def _control(
    campaign_id: UUID, action: ControlAction, resources: ApiResources, caller: Caller
) -> CampaignOut:
    with bound_contextvars(campaign_id=str(campaign_id)):
        async with resources.db.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT status, schedule_revision FROM campaigns WHERE id = $1 FOR UPDATE",
                campaign_id,
            )
            if current is None:
                raise not_found("campaign", campaign_id)
            try:
                step = transition(action, current["status"])
            except ControlRefused as exc:
                raise ProblemError(409, str(exc), kind="campaign-state") from exc
            # A cancel bumps the revision so that the scheduler forgets an unclaimed schedule.
            bump = 1 if action == "cancel" and step.changed else 0
            revision = current["schedule_revision"] + bump
            row = await conn.fetchrow(
                f"""
                UPDATE campaigns
                   SET status = $2, schedule_revision = $3, updated_at = now(),
                       finished_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE finished_at END,
                       -- a repeated pause keeps who paused it first, and why
                       paused_by = CASE WHEN $2 <> 'paused' THEN NULL
                                        WHEN status = 'paused' THEN paused_by ELSE 'admin' END,
                       pause_reason = CASE WHEN $2 = 'paused' AND status = 'paused'
                                           THEN pause_reason END,
                       -- the reputation guard holds off for a while after this resume
                       guard_resumed_at = CASE WHEN $2 = 'in_progress' AND paused_by = 'guard'
                                               THEN now() ELSE guard_resumed_at END
                 WHERE id = $1
                RETURNING {CAMPAIGN_COLUMNS}
                """,  # noqa: S608 - constants only
                campaign_id,
                step.status,
                revision,
            )
            assert row is not None  # locked above
            if step.changed:
                event = CampaignControl(
                    campaign_id=campaign_id, action=action, revision=max(revision, 1)
                )
                await publish_or_503(resources, Topic.CAMPAIGN_CONTROL, campaign_id, event)
                await record_audit(
                    conn, caller.actor, f"campaign.{action}", Target("campaign", str(campaign_id))
                )
        log.info("campaign control", action=action, status=step.status, changed=step.changed)
    return await campaign_with_stats(resources, dict(row))


_RESPONSES = problem_responses(401, 403, 404, 409, 503)


@router.post("/{campaign_id}/pause", response_model=CampaignOut, responses=_RESPONSES)
async def pause_campaign(campaign_id: UUID, resources: Resources, caller: CanEdit) -> CampaignOut:
    """Stop sending within 2 s; batches not yet sent wait. Only an `in_progress` campaign."""
    return await _control(campaign_id, "pause", resources, caller)


@router.post("/{campaign_id}/resume", response_model=CampaignOut, responses=_RESPONSES)
async def resume_campaign(campaign_id: UUID, resources: Resources, caller: CanEdit) -> CampaignOut:
    """Carry on where a paused campaign stopped; nobody is mailed twice."""
    return await _control(campaign_id, "resume", resources, caller)


@router.post("/{campaign_id}/cancel", response_model=CampaignOut, responses=_RESPONSES)
async def cancel_campaign(campaign_id: UUID, resources: Resources, caller: CanEdit) -> CampaignOut:
    """End a scheduled, sending or paused campaign; unsent recipients end `cancelled`."""
    return await _control(campaign_id, "cancel", resources, caller)
