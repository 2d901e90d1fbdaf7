"""What a bounce is, shared by the SMTP provider (at send time), the bounce-mailbox poller
(asynchronous DSNs) and the tracker (which suppresses).

- SMTP replies: an enhanced status code (RFC 3463) says whether a 5xx is about the address
  (hard: 5.1.1 no such user, 5.1.10 null MX, 5.2.1 mailbox disabled, ...) or about this
  message or the sender (a block: 5.7.1 policy, 5.2.2 mailbox full, ...). Only a hard bounce
  suppresses; a 4xx is never a bounce (the provider retries it).
- VERP: the envelope sender `bounces+<token>@<bounce domain>`; the token names the campaign
  and recipient and is signed (HMAC-SHA256, truncated) with the secret key, so a DSN sent to
  a forged address cannot suppress anybody.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from libs.mail.messages import Message

BounceClass = Literal["hard", "soft", "block"]

# How a send-time hard bounce is written in an outcome's `error`; the tracker suppresses
# the outcomes whose error starts with it.
HARD_BOUNCE_PREFIX = "hard bounce: "

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# X.1.Y is about the address, except 1.7 and 1.8 (the *sender's* address is bad).
_SENDER_ADDRESS = frozenset({7, 8})
# X.2.1: mailbox disabled, no longer accepting mail.
_DISABLED = (2, 1)


def enhanced_status(text: str) -> str | None:
    """The first RFC 3463 status code in `text` (e.g. "5.1.1"), or None."""
    match = _ENHANCED.search(text)
    return match.group(0) if match else None


def classify_status(status: str) -> BounceClass:
    """A DSN or SMTP enhanced status: hard (the address is dead), block (this message was
    refused, the address may be fine) or soft (a transient failure, 4.x.x)."""
    klass, subject, detail = (int(part) for part in status.split("."))
    if klass == 4:
        return "soft"
    if (subject == 1 and detail not in _SENDER_ADDRESS) or (subject, detail) == _DISABLED:
        return "hard"
    return "block"


def classify_reply(code: int, message: str) -> BounceClass | None:
    """An SMTP reply to RCPT or DATA: None when it is no bounce at all (not 4xx/5xx)."""
    if code < 400 or code >= 600:
        return None
    if code < 500:
        return "soft"
    status = enhanced_status(message)
    if status is None or not status.startswith("5."):
        # A bare 550 with no enhanced code: "mailbox unavailable" by RFC 5321; hard only
        # for the one code that says so (551/553 name the address too).
        return "hard" if code in (550, 551, 553) else "block"
    return classify_status(status)


def hard_bounce_error(code: int, message: str) -> str:
    return f"{HARD_BOUNCE_PREFIX}{code} {message}".strip()


def is_hard_bounce_error(error: str | None) -> bool:
    return error is not None and error.startswith(HARD_BOUNCE_PREFIX)


# ----- VERP -----

VERP_LOCAL = "bounces"
_TOKEN_MAC_BYTES = 10


@dataclass(frozen=True)
class VerpTarget:
    campaign_id: UUID
    recipient_id: int


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), b"verp:" + payload, hashlib.sha256).digest()[:_TOKEN_MAC_BYTES]


def _b32(data: bytes) -> str:
    # Base32, lower case, no padding: safe in a local part whatever the server's case folding.
    return base64.b32encode(data).decode().rstrip("=").lower()


def verp_token(secret: str, campaign_id: UUID, recipient_id: int) -> str:
    payload = campaign_id.bytes + recipient_id.to_bytes(8, "big", signed=True)
    return _b32(payload + _mac(secret, payload))


def verp_address(secret: str, domain: str, campaign_id: UUID, recipient_id: int) -> str:
    return f"{VERP_LOCAL}+{verp_token(secret, campaign_id, recipient_id)}@{domain}"


def parse_verp(secret: str, address: str) -> VerpTarget | None:
    """The campaign and recipient a VERP address names; None when it is not ours or its
    signature does not match."""
    local = address.strip().strip("<>").rsplit("@", 1)[0]
    prefix = f"{VERP_LOCAL}+"
    if not local.lower().startswith(prefix) or not secret:
        return None
    token = local[len(prefix) :].upper()
    try:
        raw = base64.b32decode(token + "=" * (-len(token) % 8))
    except ValueError:
        return None
    payload, mac = raw[:-_TOKEN_MAC_BYTES], raw[-_TOKEN_MAC_BYTES:]
    if len(payload) != 24 or not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    return VerpTarget(UUID(bytes=payload[:16]), int.from_bytes(payload[16:], "big", signed=True))


def verp_sender_for(secret: str, domain: str) -> Callable[[Message], str | None]:
    """The SMTP provider's envelope sender: each message's VERP address, from the
    correlation ids it carries (None, the From address, for a message without them)."""

    def sender(message: Message) -> str | None:
        campaign, recipient = (message.custom_args.get(k) for k in ("campaign_id", "recipient_id"))
        if not campaign or not recipient:
            return None
        return verp_address(secret, domain, UUID(campaign), int(recipient))

    return sender
