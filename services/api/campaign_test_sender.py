"""Send a campaign's rendered content to a few given addresses, now, through its provider.

Uses the dispatcher's own code (rendering, messages, provider registry) so that a test
mail is what a recipient would get. Three differences keep it apart from the real send:
its own Message-ID (a receiving system must not drop the real mail as a duplicate later),
no campaign/recipient correlation ids (so provider events for it never touch the
campaign's stats), and an `X-Mailfleet-Test` header.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from libs.common.events import BatchRecipient, RecipientOutcome
from libs.common.settings import Settings
from libs.common.templating import render_limits
from libs.mail.config import DispatcherSettings, get_dispatcher_settings
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Message, Outbox, Sender
from libs.mail.providers.base import ProviderOutage, failed
from libs.mail.providers.registry import build_providers
from libs.mail.rendering import Content, line_break_problem, render_failure, render_message

MAX_TEST_ADDRESSES = 10
# An admin waits for the answer: fail fast rather than retry for a minute as a batch would.
_TEST_SEND_RETRY = {
    "provider_max_attempts": 2,
    "provider_retry_initial_s": 0.2,
    "provider_retry_max_s": 1.0,
}
_MAX_TIMEOUT_S = 15.0
# Test messages that are not a list member's carry no unsubscribe link: there is nothing
# to unsubscribe. Their recipient id in outcomes is this placeholder.
NOT_A_MEMBER = 0


@dataclass(frozen=True)
class Addressee:
    email: str
    recipient_id: int | None = None  # the list member with this address, if any
    fields: dict[str, Any] = field(default_factory=dict)


def settings_for_test_sends(base: DispatcherSettings) -> DispatcherSettings:
    return base.model_copy(
        update={
            **_TEST_SEND_RETRY,
            "provider_timeout_s": min(base.provider_timeout_s, _MAX_TIMEOUT_S),
        }
    )


def _headers(
    settings: Settings, campaign: dict[str, Any], target: Addressee, test_id: str
) -> dict[str, str]:
    from_email = str(campaign["from_email"])
    headers: dict[str, str] = {}
    if target.recipient_id is not None and settings.secret_key:
        base = settings.public_base_url()
        policy = HeaderPolicy(base, settings.secret_key)
        headers = policy.headers(campaign["id"], target.recipient_id, from_email)
    domain = from_email.rsplit("@", 1)[-1] or "mailfleet.invalid"
    headers["Message-ID"] = f"<mf.test.{uuid.uuid4().hex}@{domain}>"
    headers["X-Mailfleet-Test"] = test_id
    return headers


def build_test_messages(
    settings: Settings, campaign: dict[str, Any], targets: list[Addressee], test_id: str
) -> tuple[Outbox, list[RecipientOutcome]]:
    """The outbox to send, and the outcomes settled without sending (render failures)."""
    content = Content(
        id=uuid.uuid4(),
        campaign_id=campaign["id"],
        subject=campaign["subject"],
        html=campaign["html"],
        text=campaign["text"],
        from_email=campaign["from_email"],
        from_name=campaign["from_name"],
    )
    outbox = Outbox(sender=Sender(content.from_email, content.from_name))
    settled: list[RecipientOutcome] = []
    limits = render_limits(settings)
    sender_problem = line_break_problem("from_name", content.from_name)
    for target in targets:
        recipient = BatchRecipient(
            recipient_id=target.recipient_id or NOT_A_MEMBER,
            email=target.email,
            fields=target.fields,
        )
        args = {"mailfleet_test_send": test_id}
        try:
            if sender_problem is not None:
                raise ValueError(sender_problem)
            headers = _headers(settings, campaign, target, test_id)
            message: Message = render_message(content, recipient, headers, args, limits)
        except Exception as exc:  # a user template may fail at runtime in any way
            settled.append(
                RecipientOutcome(
                    recipient_id=recipient.recipient_id,
                    email=target.email,
                    status="failed",
                    error=render_failure(exc),
                )
            )
            continue
        outbox.individual.append(message)
    return outbox, settled


async def _ignore_progress(_: list[RecipientOutcome]) -> None:
    return None


async def send_test(
    settings: Settings, campaign: dict[str, Any], targets: list[Addressee]
) -> list[RecipientOutcome]:
    """One outcome per target, in no particular order; never raises for a provider failure."""
    test_id = uuid.uuid4().hex
    # Off the event loop: rendering runs the campaign's templates (user code).
    outbox, settled = await asyncio.to_thread(
        build_test_messages, settings, campaign, targets, test_id
    )
    if not outbox.individual:
        return settled
    extra = settings_for_test_sends(get_dispatcher_settings())
    async with aiohttp.ClientSession() as session:
        providers = build_providers(settings, extra, session)
        try:
            provider = providers[campaign["provider"]]
            outcomes = await provider.send(outbox, _ignore_progress)
        except ProviderOutage as outage:
            # A campaign would pause on this; a test send reports it to whoever asked.
            answered = {o.recipient_id for o in outage.settled}
            error = f"provider refused the account: {outage.reason}"
            outcomes = outage.settled + [
                failed(m.recipient_id, m.email, error)
                for m in outbox.individual
                if m.recipient_id not in answered
            ]
        finally:
            for built in providers.values():
                await built.close()
    return settled + outcomes
