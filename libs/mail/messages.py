"""What a provider is asked to send: provider-neutral, already rendered or ready to substitute.

A batch becomes an `Outbox`: recipients whose message is the shared body with substitutions
(one SendGrid request for up to 1,000 of them) and recipients rendered one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from libs.common.events import RecipientOutcome

# Pragmatic address check (the same one the sink applies for SendGrid): a local part, an
# `@`, a dotted domain, nothing that breaks a header. Stricter checks belong to the importer.
_ADDRESS = re.compile(
    r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
MAX_ADDRESS_LENGTH = 254


def is_valid_address(address: str) -> bool:
    return len(address) <= MAX_ADDRESS_LENGTH and _ADDRESS.match(address) is not None


@dataclass(frozen=True)
class Sender:
    email: str
    name: str | None = None


@dataclass(frozen=True)
class Message:
    """One recipient's message, rendered."""

    recipient_id: int
    email: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    custom_args: dict[str, str]


@dataclass(frozen=True)
class TemplatedRecipient:
    recipient_id: int
    email: str
    substitutions: dict[str, str]
    headers: dict[str, str]
    custom_args: dict[str, str]


@dataclass(frozen=True)
class TemplatedGroup:
    """A shared subject/body with substitution tags, and the values of each recipient."""

    subject: str
    html: str
    text: str
    recipients: list[TemplatedRecipient]

    def expand(self, recipient: TemplatedRecipient) -> Message:
        """The message as the provider delivers it (what SendGrid does with `substitutions`)."""
        return Message(
            recipient_id=recipient.recipient_id,
            email=recipient.email,
            subject=apply_substitutions(self.subject, recipient.substitutions),
            html=apply_substitutions(self.html, recipient.substitutions),
            text=apply_substitutions(self.text, recipient.substitutions),
            headers=recipient.headers,
            custom_args=recipient.custom_args,
        )


def apply_substitutions(body: str, substitutions: dict[str, str]) -> str:
    for tag, value in substitutions.items():
        body = body.replace(tag, value)
    return body


@dataclass
class Outbox:
    """Everything one batch sends, plus the recipients settled without sending (invalid)."""

    sender: Sender
    templated: TemplatedGroup | None = None
    individual: list[Message] = field(default_factory=list)
    settled: list[RecipientOutcome] = field(default_factory=list)
    # mailfleet tracks opens and clicks itself (links and pixel already rewritten): a
    # provider must not add its own on top (SendGrid's would count every hit twice).
    own_tracking: bool = False

    @property
    def recipient_count(self) -> int:
        templated = len(self.templated.recipients) if self.templated else 0
        return templated + len(self.individual)
