"""Signed confirmation links of double opt-in subscriptions (`/confirm/{token}`). Pure.

The importer writes them into the confirmation email; the edge verifies them when the link
is followed, with no database. A token names the list, the address and when it was
issued, and carries an HMAC of all three under the shared secret (domain-separated from
unsubscribe links), so it can be neither forged nor edited to confirm another address:
base64url(list id 16 bytes + issued at, unix seconds, unsigned 64-bit big-endian +
address UTF-8) "." base64url(first 16 bytes of HMAC-SHA256(secret, "confirm\\0" + payload)).
A link is good for `CONFIRM_LINK_TTL` (7 days) after it was issued.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

CONFIRM_LINK_TTL = timedelta(days=7)
MAX_TOKEN_CHARS = 512
_ISSUED = struct.Struct(">Q")
_HEAD = 16 + _ISSUED.size
_MAC_BYTES = 16
_DOMAIN = b"confirm\0"


class BadConfirmToken(ValueError):
    """Not a link we signed (forged, edited or truncated)."""


class ExpiredConfirmToken(ValueError):
    """A link we signed, older than CONFIRM_LINK_TTL."""


@dataclass(frozen=True)
class ConfirmTarget:
    list_id: UUID
    email: str
    issued_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    if not secret:
        raise ValueError("MAILFLEET_SECRET_KEY is not set: confirmation links cannot be signed")
    return hmac.new(secret.encode(), _DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def make_confirm_token(secret: str, list_id: UUID, email: str, issued_at: datetime) -> str:
    payload = list_id.bytes + _ISSUED.pack(int(issued_at.timestamp())) + email.encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def read_confirm_token(secret: str, token: str, *, now: datetime | None = None) -> ConfirmTarget:
    """The target of a valid link; BadConfirmToken or ExpiredConfirmToken otherwise."""
    if len(token) > MAX_TOKEN_CHARS:
        raise BadConfirmToken("malformed confirmation link")
    try:
        payload_text, mac_text = token.split(".", 1)
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, binascii.Error) as exc:
        raise BadConfirmToken("malformed confirmation link") from exc
    if len(payload) <= _HEAD or not hmac.compare_digest(mac, _mac(secret, payload)):
        raise BadConfirmToken("this confirmation link is not valid")
    (issued,) = _ISSUED.unpack(payload[16:_HEAD])
    try:
        email = payload[_HEAD:].decode()
    except UnicodeDecodeError as exc:  # only reachable with the secret: still refuse
        raise BadConfirmToken("this confirmation link is not valid") from exc
    issued_at = datetime.fromtimestamp(issued, UTC)
    if (now or datetime.now(UTC)) - issued_at > CONFIRM_LINK_TTL:
        raise ExpiredConfirmToken("this confirmation link has expired")
    return ConfirmTarget(UUID(bytes=payload[:16]), email, issued_at)


def confirm_url(base_url: str, secret: str, list_id: UUID, email: str, issued_at: datetime) -> str:
    token = make_confirm_token(secret, list_id, email, issued_at)
    return f"{base_url.rstrip('/')}/confirm/{token}"
