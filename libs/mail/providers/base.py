"""What every provider offers the dispatcher, and the rules all providers share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from pydantic import TypeAdapter

from libs.common.events import RecipientOutcome
from libs.mail.circuit_breaker import CircuitBreaker
from libs.mail.messages import Outbox
from libs.mail.rate_limit import RateLimiter

# Called with the outcomes of each provider request as soon as it is answered, so the send
# ledger can record progress finer than a whole batch.
ProgressCallback = Callable[[list[RecipientOutcome]], Awaitable[None]]

Item = TypeVar("Item")


class Provider(Protocol):
    name: str
    # The dispatcher waits for `limiter` before it claims a batch; a provider waits for it
    # again only before a retry (a retried request costs the provider's rate again).
    limiter: RateLimiter
    # Fed by the provider with each request's fate; the dispatcher reads it to fail over.
    breaker: CircuitBreaker

    async def send(self, outbox: Outbox, on_progress: ProgressCallback) -> list[RecipientOutcome]:
        """Send everything in `outbox`; one outcome per recipient. Never raises for a
        recipient's failure: those become `failed` outcomes with the provider's message, and
        an answer that may or may not have been accepted becomes `unknown`. Raises
        `ProviderOutage` when the provider refuses the account itself (see there)."""
        ...

    async def close(self) -> None: ...


class AccountRefused(Exception):  # noqa: N818 - a provider's answer, raised inside a send
    """The provider refused our credentials or configuration (SendGrid 401/403/413, SMTP
    535): no recipient is at fault, and nothing was accepted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderOutage(Exception):  # noqa: N818 - an outcome of the whole send
    """The provider refused the account (an auth or configuration error): an outage, not a
    recipient's failure. `settled` holds the outcomes of requests answered before (or
    alongside) the refusal; every other recipient of the outbox was not sent, and stays
    pending."""

    def __init__(self, provider: str, reason: str, settled: list[RecipientOutcome]) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason
        self.settled = settled


async def send_all(
    provider: str,
    items: Iterable[Item],
    send_one: Callable[[Item], Awaitable[list[RecipientOutcome]]],
    on_progress: ProgressCallback,
) -> list[RecipientOutcome]:
    """Send every item concurrently (the provider bounds its own concurrency).

    A TaskGroup: an unexpected exception in one send cancels its siblings instead of leaving
    them sending, unobserved, after the batch has been given up. An `AccountRefused` stops
    new sends from starting; those already under way are answered, then `ProviderOutage`
    carries what was settled.
    """
    refusal: list[str] = []

    async def one(item: Item) -> list[RecipientOutcome]:
        if refusal:
            return []  # not started: the recipient stays pending
        try:
            outcomes = await send_one(item)
        except AccountRefused as exc:
            refusal.append(exc.reason)
            return []
        await on_progress(outcomes)
        return outcomes

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except ExceptionGroup as errors:
        # The siblings are cancelled and awaited by now; the caller sees the first cause.
        raise errors.exceptions[0] from errors
    settled = [outcome for task in tasks for outcome in task.result()]
    if refusal:
        raise ProviderOutage(provider, refusal[0], settled)
    return settled


class Addressee(Protocol):
    @property
    def recipient_id(self) -> int: ...
    @property
    def email(self) -> str: ...


_OUTCOMES = TypeAdapter(list[RecipientOutcome])


def all_sent(recipients: Sequence[Addressee], message_id: str | None) -> list[RecipientOutcome]:
    """`sent` for each of a request's recipients, validated as one list (a third cheaper
    than one model at a time: it runs for every recipient)."""
    return _OUTCOMES.validate_python(
        [
            {"recipient_id": r.recipient_id, "email": r.email, "status": "sent",
             "message_id": message_id}
            for r in recipients
        ]
    )  # fmt: skip


def sent(recipient_id: int, email: str, message_id: str | None) -> RecipientOutcome:
    return RecipientOutcome(
        recipient_id=recipient_id, email=email, status="sent", message_id=message_id
    )


def failed(recipient_id: int, email: str, error: str) -> RecipientOutcome:
    return RecipientOutcome(recipient_id=recipient_id, email=email, status="failed", error=error)


def unknown(recipient_id: int, email: str, error: str) -> RecipientOutcome:
    """The provider may or may not have accepted it (a read timeout, a connection dropped
    after the request was written): never retried in at-most-once mode."""
    return RecipientOutcome(recipient_id=recipient_id, email=email, status="unknown", error=error)
