"""What every provider offers the dispatcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from libs.common.events import RecipientOutcome
from libs.mail.circuit_breaker import CircuitBreaker
from libs.mail.messages import Outbox
from libs.mail.rate_limit import RateLimiter

# Called with the outcomes of each provider request as soon as it is answered, so the send
# ledger can record progress finer than a whole batch.
ProgressCallback = Callable[[list[RecipientOutcome]], Awaitable[None]]


class Provider(Protocol):
    name: str
    # The dispatcher waits for `limiter` before it claims a batch; a provider waits for it
    # again only before a retry (a retried request costs the provider's rate again).
    limiter: RateLimiter
    # Fed by the provider with each request's fate; the dispatcher reads it to fail over.
    breaker: CircuitBreaker

    async def send(self, outbox: Outbox, on_progress: ProgressCallback) -> list[RecipientOutcome]:
        """Send everything in `outbox`; one outcome per recipient. Never raises for a
        provider failure: failures become `failed` outcomes with the provider's message."""
        ...

    async def close(self) -> None: ...


def sent(recipient_id: int, email: str, message_id: str | None) -> RecipientOutcome:
    return RecipientOutcome(
        recipient_id=recipient_id, email=email, status="sent", message_id=message_id
    )


def failed(recipient_id: int, email: str, error: str) -> RecipientOutcome:
    return RecipientOutcome(recipient_id=recipient_id, email=email, status="failed", error=error)
