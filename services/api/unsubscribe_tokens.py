"""Signed unsubscribe tokens for `/u/{token}` links. Pure.

A token names a campaign and a recipient id (never the address) and carries an HMAC of
both, so it cannot be forged, nor edited to unsubscribe a different recipient.
Whoever renders mail (the dispatcher) creates them with `make_token` and the same secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass
from uuid import UUID

_VERSION = 1
_PAYLOAD = struct.Struct(">B16sQ")  # version, campaign id, recipient id
_MAC_BYTES = 16
_CONTEXT = b"mailfleet-unsubscribe"


class BadToken(ValueError):
    pass


@dataclass(frozen=True)
class UnsubscribeTarget:
    campaign_id: UUID
    recipient_id: int


def _mac(secret: str, payload: bytes) -> bytes:
    if not secret:
        raise ValueError("MAILFLEET_SECRET_KEY is not set: unsubscribe links cannot be signed")
    return hmac.new(secret.encode(), _CONTEXT + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(secret: str, campaign_id: UUID, recipient_id: int) -> str:
    payload = _PAYLOAD.pack(_VERSION, campaign_id.bytes, recipient_id)
    return base64.urlsafe_b64encode(payload + _mac(secret, payload)).decode().rstrip("=")


def read_token(secret: str, token: str) -> UnsubscribeTarget:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error) as exc:
        raise BadToken("malformed unsubscribe link") from exc
    if len(raw) != _PAYLOAD.size + _MAC_BYTES:
        raise BadToken("malformed unsubscribe link")
    payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise BadToken("this unsubscribe link is not valid")
    version, campaign, recipient_id = _PAYLOAD.unpack(payload)
    if version != _VERSION:
        raise BadToken("this unsubscribe link is not valid")
    return UnsubscribeTarget(UUID(bytes=campaign), recipient_id)
