"""Subscriber rights (issue 15 item 5): export and erasure of one person's data, by address.

Admin-only and audited. The audit record names the person by the erased token (a keyed
hash of the address), never by the address: an export's record must not be the one place
left holding the address after a later erasure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from libs.common import suppressions
from libs.common.addresses import InvalidAddress, normalised_address
from libs.common.logging import get_logger
from libs.web.problems import FieldError, ProblemError, problem_responses
from services.api import people_repo
from services.api.audit import Target, record_audit
from services.api.deps import ApiResources, IsAdmin, Resources

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/people", tags=["people"])

EmailPath = Annotated[str, Path(min_length=3, max_length=320, description="The address.")]


class PersonExport(BaseModel):
    email: str
    exported_at: datetime
    recipients: list[dict[str, Any]] = Field(description="Rows on lists, with merge fields.")
    suppression: dict[str, Any] | None
    soft_bounce_streak: dict[str, Any] | None
    consents: list[dict[str, Any]] = Field(description="Consent records (none are kept yet).")
    deliveries: list[dict[str, Any]] = Field(description="The delivery log: one row a campaign.")
    events: list[dict[str, Any]] = Field(description="Provider and tracking events.")
    import_rejections: list[dict[str, Any]] = Field(description="Rejected import rows naming it.")
    audit: list[dict[str, Any]] = Field(description="Admin actions whose target is the address.")


class PersonErased(BaseModel):
    token: str = Field(description="What the suppression list now holds instead of the address.")
    erased: dict[str, Any] = Field(description="How many rows of each kind were erased.")


def _address(raw: str) -> str:
    try:
        return normalised_address(raw)
    except InvalidAddress as exc:
        raise ProblemError(
            422,
            f"email: {exc}",
            kind="validation",
            errors=[FieldError(field="path.email", message=str(exc))],
        ) from exc


def _key(resources: ApiResources) -> bytes:
    if not resources.settings.secret_key:
        raise ProblemError(
            503,
            "MAILFLEET_SECRET_KEY is not set: erased addresses are kept as keyed hashes",
            kind="not-configured",
        )
    return suppressions.erasure_key(resources.settings.secret_key)


@router.get(
    "/{email}/export", response_model=PersonExport, responses=problem_responses(401, 403, 422, 503)
)
async def export_person(email: EmailPath, resources: Resources, caller: IsAdmin) -> PersonExport:
    """Everything held about one address, as JSON (GDPR art. 15). Admin only; audited."""
    address = _address(email)
    key = _key(resources)
    async with resources.db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        token = await suppressions.erased_token(conn, address, key)
        data = await people_repo.export(conn, address)
        await record_audit(conn, caller.actor, "person.export", Target("person", token))
    log.info("person exported", api_key=caller.name)
    return PersonExport(exported_at=datetime.now(UTC), **data)


@router.delete(
    "/{email}", response_model=PersonErased, responses=problem_responses(401, 403, 409, 422, 503)
)
async def erase_person(email: EmailPath, resources: Resources, caller: IsAdmin) -> PersonErased:
    """Erase the address everywhere (GDPR art. 17), keeping only a keyed hash in the
    suppression list so that it is never imported or mailed again. Admin only; audited.
    409 while a batch that holds the address is being sent (retry when it has gone)."""
    address = _address(email)
    key = _key(resources)
    async with resources.db.acquire() as conn, conn.transaction():
        try:
            done = await people_repo.erase(conn, address, key)
        except people_repo.InFlight as exc:
            raise ProblemError(
                409,
                "the address is in a batch being sent by campaign(s) "
                f"{', '.join(exc.campaign_ids)}; retry once it has been sent (or cancel the"
                " campaign)",
                kind="erasure-in-flight",
            ) from exc
        await record_audit(
            conn, caller.actor, "person.erase", Target("person", done.token), done.counts()
        )
    log.warning("person erased", api_key=caller.name, **done.counts())
    return PersonErased(token=done.token, erased=done.counts())
