"""Transactional messages (issue 18 item 1): one `message.requested` event, one recipient,
sent through the campaigns' path (no Kafka, no HTTP here).

A message becomes a one-recipient batch: batch id `msg:<message id>`, the message id in
place of the campaign id, recipient id 0, its content held in memory for the send. The
`BatchDispatcher` then does what it does for campaigns: suppressions at claim time, the
bounded render (headers, tracking), the send ledger (a claim with a lease and fenced
writes, so a message goes out at most once, whatever redelivers it), the provider. There
is no campaign status (a message cannot be paused) and no per-domain throttle or warm-up.

Essential categories (a settable list) skip the unsubscribe suppressions only: bounces,
complaints, manual suppressions and erasures (looked up by their keyed token) still hold. They carry no List-Unsubscribe.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

import orjson

from libs.common.events import (
    BatchReady,
    BatchRecipient,
    DeliveryResult,
    MessageRequested,
    RecipientOutcome,
)
from libs.common.idempotency import Accepted, body_hash
from libs.common.logging import bound_contextvars, get_logger
from libs.mail.headers import EssentialHeaderPolicy, HeaderPolicy
from libs.mail.rendering import Content
from services.dispatcher.dispatch import BatchDispatcher

log = get_logger(__name__)

# The namespace of message ids derived from an event that names none.
_MESSAGE_NS = uuid.UUID("6f0e2a51-93a4-4f4c-9d53-0c3c0b7c1a18")
RECIPIENT_ID = 0
# Suppression reasons that an essential message ignores: the person's marketing choices.
ESSENTIAL_IGNORES = frozenset({"unsubscribe"})


class KeyReused(Exception):
    """The idempotency key is bound to another message body (24 h): refused, not sent."""


@dataclass(frozen=True)
class Template:
    subject: str
    html: str
    text: str | None


class TemplateSource(Protocol):
    async def get(self, template_id: UUID, version: int | None) -> Template | None: ...


class SuppressionReasons(Protocol):
    async def __call__(self, emails: list[str]) -> dict[str, str]:
        """Lower-cased suppressed address -> its reason."""
        ...


Accept = Callable[[MessageRequested, UUID, bytes], Awaitable[Accepted]]


def batch_id_of(message_id: UUID) -> str:
    return f"msg:{message_id}"


def derived_id(event: MessageRequested) -> UUID:
    """The id of an event that names neither a message id nor a key: the same record read
    again is the same message (give one or the other to send two equal messages)."""
    body = event.model_dump(mode="json", exclude={"message_id"})
    return uuid.uuid5(_MESSAGE_NS, orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode())


class _HeldContent:
    """The content of the messages being sent, by message id (their `content_id`)."""

    def __init__(self) -> None:
        self.items: dict[UUID, Content] = {}

    async def get(self, content_id: UUID) -> Content | None:
        return self.items.get(content_id)


class MessageLane:
    """Sends messages with two batch dispatchers: one for essential categories (unsubscribes
    ignored, no List-Unsubscribe) and one for the rest. `make_dispatcher` builds one from a
    content source, a header policy and a suppression check."""

    def __init__(
        self,
        *,
        make_dispatcher: Callable[..., BatchDispatcher],
        headers: HeaderPolicy,
        suppressions: SuppressionReasons,
        templates: TemplateSource,
        accept: Accept,
        essential: frozenset[str],
        default_provider: str,
    ) -> None:
        self._held = _HeldContent()
        self._templates = templates
        self._accept = accept
        self._essential = essential
        self._default_provider = default_provider
        self._reasons = suppressions

        async def marketing(emails: list[str]) -> set[str]:
            return set(await suppressions(emails))

        async def essential_only(emails: list[str]) -> set[str]:
            found = await suppressions(emails)
            return {e for e, reason in found.items() if reason not in ESSENTIAL_IGNORES}

        essential_headers = EssentialHeaderPolicy(
            headers.public_base_url, headers.secret_key, headers.unsubscribe_mailto
        )
        self._marketing = make_dispatcher(content=self._held, headers=headers, suppressed=marketing)
        self._essential_dispatcher = make_dispatcher(
            content=self._held, headers=essential_headers, suppressed=essential_only
        )

    def is_essential(self, category: str | None) -> bool:
        return category is not None and category in self._essential

    async def message_id(self, event: MessageRequested) -> UUID:
        """The message's id; raises `KeyReused` when its key names another message."""
        if event.idempotency_key is None:
            return event.message_id or derived_id(event)
        digest = body_hash(event.model_dump(mode="json"))
        accepted = await self._accept(event, event.message_id or uuid.uuid4(), digest)
        if accepted.outcome == "conflict":
            raise KeyReused(
                f"idempotency key {event.idempotency_key!r} was used for another message"
                f" ({accepted.message_id}) within 24 h"
            )
        return accepted.message_id

    async def send(self, event: MessageRequested) -> DeliveryResult:
        """Send (or replay) one message; raises `KeyReused`, or `HandedBack` (stopping, or
        a provider that refused the account) when it was not sent."""
        message_id = await self.message_id(event)
        with bound_contextvars(message_id=str(message_id), category=event.category or ""):
            content, problem = await self._content(event, message_id)
            provider = event.provider or self._default_provider
            if content is None:
                # Nothing to send (an unknown template): reported `failed`, nothing claimed.
                log.warning("message not sent", reason=problem)
                now = datetime.now(UTC)
                return DeliveryResult(
                    batch_id=batch_id_of(message_id), campaign_id=message_id, batch_no=0,
                    batches_total=1, audience_total=1, suppressed_total=0, provider=provider,
                    outcomes=[RecipientOutcome(recipient_id=RECIPIENT_ID, email=event.to,
                                               status="failed", error=problem)],
                    started_at=now, finished_at=now, message_id=message_id,
                    category=event.category,
                )  # fmt: skip
            batch = BatchReady(
                batch_id=batch_id_of(message_id),
                campaign_id=message_id,
                batch_no=0,
                batches_total=1,
                audience_total=1,
                suppressed_total=0,
                content_id=message_id,
                provider=provider,
                recipients=[
                    BatchRecipient(recipient_id=RECIPIENT_ID, email=event.to, fields=event.data)
                ],
            )
            dispatcher = (
                self._essential_dispatcher if self.is_essential(event.category) else self._marketing
            )
            self._held.items[message_id] = content
            try:
                result = await dispatcher.dispatch(batch)
            finally:
                self._held.items.pop(message_id, None)
            return result.model_copy(update={"message_id": message_id, "category": event.category})

    async def _content(
        self, event: MessageRequested, message_id: UUID
    ) -> tuple[Content | None, str | None]:
        if event.content is not None:
            inline = event.content
            return (
                Content(
                    id=message_id, campaign_id=message_id, subject=inline.subject,
                    html=inline.html, text=inline.text, from_email=inline.from_email,
                    from_name=inline.from_name, tracking=event.track,
                ),
                None,
            )  # fmt: skip
        assert event.template_id is not None and event.from_email is not None
        template = await self._templates.get(event.template_id, event.template_version)
        if template is None:
            version = event.template_version or "latest"
            return None, f"template {event.template_id} version {version} not found"
        return (
            Content(
                id=message_id, campaign_id=message_id, subject=template.subject,
                html=template.html, text=template.text, from_email=event.from_email,
                from_name=event.from_name, tracking=event.track,
            ),
            None,
        )  # fmt: skip
