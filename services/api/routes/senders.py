"""Sender check: is a From domain set up for bulk mail (SPF, DKIM, DMARC, bounce MX)?"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from libs.common.logging import get_logger
from libs.common.settings import ProviderName, Settings
from libs.mail.dkim_signing import DkimKeyError, load_keys
from libs.mail.sender_check import Dns, SenderReport, SenderSetup, check_sender
from libs.web.problems import ProblemError, problem_responses
from services.api.deps import CanRead, Resources
from services.api.schemas import SenderCheckItem, SenderCheckOut

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/senders", tags=["senders"])

_DOMAIN = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\.?$"


async def run_sender_check(settings: Settings, domain: str, provider: str) -> SenderReport:
    """Raises DkimKeyError when a configured key file cannot be read."""
    setup = SenderSetup(
        provider=provider,
        smtp_host=settings.smtp_host,
        dkim_keys=load_keys(settings.dkim_keys),
        bounce_domain=settings.bounce_domain,
    )
    servers = [s.strip() for s in settings.dns_nameservers.split(",") if s.strip()]
    return await check_sender(
        domain, setup, Dns(servers, settings.dns_port, settings.dns_timeout_s)
    )


async def schedule_warnings(settings: Settings, from_email: str, provider: str) -> list[str]:
    """What the schedule response says about the From domain; never raises, never blocks
    longer than MAILFLEET_DNS_TIMEOUT_S. The local sink sends no real mail: not checked."""
    if provider == "sink":
        return []
    domain = from_email.rsplit("@", 1)[-1]
    try:
        report = await run_sender_check(settings, domain, provider)
    except DkimKeyError as exc:
        return [f"sender check not run: {exc}"]
    if report.skipped is not None:
        return [f"sender check skipped: {report.skipped}"]
    warnings = [
        f"sender check {c.name} failed for {domain}: {c.detail}"
        + (f" (fix: {c.fix})" if c.fix else "")
        for c in report.checks
        if c.status == "fail"
    ]
    if warnings:
        log.warning("scheduled from a domain that fails the sender check", domain=domain)
    return warnings


@router.get(
    "/{domain}/check",
    response_model=SenderCheckOut,
    responses=problem_responses(401, 403, 422, 503),
)
async def check_domain(
    domain: Annotated[str, Path(pattern=_DOMAIN, max_length=253)],
    resources: Resources,
    _: CanRead,
    provider: Annotated[
        ProviderName | None, Query(description="Default: MAILFLEET_DEFAULT_PROVIDER.")
    ] = None,
) -> SenderCheckOut:
    """SPF, DKIM, DMARC and the bounce domain's MX, each pass, warn or fail with what to fix."""
    settings = resources.settings
    chosen = provider or settings.default_provider
    try:
        report = await run_sender_check(settings, domain, chosen)
    except DkimKeyError as exc:
        raise ProblemError(503, f"DKIM key configuration: {exc}") from exc
    return SenderCheckOut(
        domain=report.domain,
        provider=chosen,
        status=report.status,
        skipped=report.skipped,
        checks=[
            SenderCheckItem(name=c.name, status=c.status, detail=c.detail, fix=c.fix)
            for c in report.checks
        ],
    )
