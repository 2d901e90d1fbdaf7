"""Signed one-click unsubscribe tokens (RFC 8058) carried in every message's headers.

The token names the campaign and recipient and is signed with `MAILFLEET_SECRET_KEY`, so the
API can honour a click without any lookup table. `verify_token` is the API's side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from uuid import UUID

_SIGNATURE_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: bytes) -> bytes:
    return hmac.digest(secret.encode(), payload, hashlib.sha256)[:_SIGNATURE_BYTES]


def make_token(secret: str, campaign_id: UUID, recipient_id: int) -> str:
    payload = campaign_id.bytes + struct.pack(">q", recipient_id)
    return f"{_b64(payload)}.{_b64(_sign(secret, payload))}"


def verify_token(secret: str, token: str) -> tuple[UUID, int] | None:
    """(campaign id, recipient id) of a genuine token, else None."""
    try:
        payload_text, signature_text = token.split(".", 1)
        payload, signature = _unb64(payload_text), _unb64(signature_text)
    except (ValueError, TypeError):
        return None
    if len(payload) != 24 or not hmac.compare_digest(signature, _sign(secret, payload)):
        return None
    return UUID(bytes=payload[:16]), struct.unpack(">q", payload[16:])[0]


def unsubscribe_url(base_url: str, secret: str, campaign_id: UUID, recipient_id: int) -> str:
    return f"{base_url.rstrip('/')}/u/{make_token(secret, campaign_id, recipient_id)}"
