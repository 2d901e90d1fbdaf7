"""`POST /api/v1/campaigns/{id}/test`: the campaign, rendered, to up to 10 given addresses."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from libs.common.addresses import InvalidAddress, normalised_address
from libs.common.events import RecipientOutcome
from libs.common.logging import bound_contextvars, get_logger
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import recipients_repo, repository
from services.api.audit import Target, record_audit
from services.api.campaign_test_schemas import SendTestOut, SendTestRequest, SendTestResult
from services.api.campaign_test_sender import Addressee, send_test
from services.api.deps import CanEdit, Resources
from services.api.routes.campaigns import refuse_costly_templates
from services.api.routes.common import not_found

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])


def _addresses(raw: list[str]) -> list[str]:
    """Normalised like list members' addresses, duplicates dropped (first kept); 422 names
    each bad entry."""
    found: list[str] = []
    errors: list[FieldError] = []
    for index, value in enumerate(raw):
        try:
            email = normalised_address(value)
        except InvalidAddress as exc:
            errors.append(FieldError(field=f"body.emails.{index}", message=str(exc)))
            continue
        if email not in found:
            found.append(email)
    if errors:
        raise ProblemError(
            422,
            "; ".join(f"{e.field}: {e.message}" for e in errors),
            kind="validation",
            errors=errors,
        )
    return found


@router.post(
    "/{campaign_id}/test",
    response_model=SendTestOut,
    responses=problem_responses(401, 403, 404, 413, 422),
)
async def send_test_mail(
    campaign_id: UUID, body: SendTestRequest, resources: Resources, caller: CanEdit
) -> SendTestOut:
    """Render the campaign for each address (merge fields of the list member with that
    address, else just `email`) and send it now through the campaign's provider. Suppressed
    addresses are skipped. Answers each address's outcome; the campaign is not changed."""
    emails = _addresses(body.emails)
    campaign = await repository.get_campaign(resources.db, campaign_id)
    if campaign is None:
        raise not_found("campaign", campaign_id)
    await refuse_costly_templates(resources, campaign, where="campaign")
    members = await recipients_repo.find_many(resources.db, campaign["list_id"], emails)
    suppressed = await recipients_repo.suppression_reasons(resources.db, emails)
    targets = [
        Addressee(email, members[email]["id"], members[email]["fields"] or {})
        if email in members
        else Addressee(email)
        for email in emails
        if email not in suppressed
    ]
    with bound_contextvars(campaign_id=str(campaign_id)):
        outcomes = {o.email: o for o in await send_test(resources.settings, campaign, targets)}
        results = [
            _result(email, email in members, suppressed.get(email), outcomes.get(email))
            for email in emails
        ]
        await record_audit(
            resources.db,
            caller.actor,
            "campaign.test_send",
            Target("campaign", str(campaign_id)),
            {"emails": [r.email for r in results], "statuses": [r.status for r in results]},
        )
        log.info(
            "test mail sent",
            provider=campaign["provider"],
            sent=sum(r.status == "sent" for r in results),
            failed=sum(r.status == "failed" for r in results),
        )
    return SendTestOut(campaign_id=campaign_id, provider=campaign["provider"], results=results)


def _result(
    email: str, member: bool, suppression: str | None, outcome: RecipientOutcome | None
) -> SendTestResult:
    if suppression is not None:
        return SendTestResult(
            email=email,
            status="suppressed",
            list_member=member,
            error=f"suppressed ({suppression}): never mailed",
        )
    if outcome is None:  # a provider answers for every message; never leave an address out
        return SendTestResult(
            email=email, status="failed", list_member=member, error="no outcome from the provider"
        )
    return SendTestResult(
        email=email,
        status="sent" if outcome.status == "sent" else "failed",
        list_member=member,
        message_id=outcome.message_id,
        error=outcome.error,
    )
