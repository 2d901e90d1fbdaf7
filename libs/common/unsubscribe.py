"""Signed one-click unsubscribe tokens (RFC 8058) for `/u/{token}` links. Pure.

The dispatcher writes them into every message's List-Unsubscribe header; the API reads
them when the link is followed. A token names a campaign and a recipient id (never the
address) and carries an HMAC of both, so it cannot be forged, nor edited to unsubscribe a
different recipient: base64url(campaign id 16 bytes + recipient id as a signed 64-bit
big-endian) "." base64url(first 16 bytes of HMAC-SHA256(secret, payload)).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
from dataclasses import dataclass
from uuid import UUID

from libs.common.keyed_hash import keyed_sha256

_RECIPIENT = struct.Struct(">q")
_PAYLOAD_BYTES = 16 + _RECIPIENT.size
_MAC_BYTES = 16


class BadToken(ValueError):
    pass


@dataclass(frozen=True)
class UnsubscribeTarget:
    campaign_id: UUID
    recipient_id: int


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # base64.urlsafe_b64encode without its two Python-level calls (one token per recipient).
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    if not secret:
        raise ValueError("MAILFLEET_SECRET_KEY is not set: unsubscribe links cannot be signed")
    # The key's blocks hashed once per process (`keyed_hash`): one token per recipient.
    return keyed_sha256(secret).digest(payload)[:_MAC_BYTES]


def make_token(secret: str, campaign_id: UUID, recipient_id: int) -> str:
    payload = campaign_id.bytes + _RECIPIENT.pack(recipient_id)
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def read_token(secret: str, token: str) -> UnsubscribeTarget:
    try:
        payload_text, mac_text = token.split(".", 1)
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, binascii.Error) as exc:
        raise BadToken("malformed unsubscribe link") from exc
    if len(payload) != _PAYLOAD_BYTES or not hmac.compare_digest(mac, _mac(secret, payload)):
        raise BadToken("this unsubscribe link is not valid")
    (recipient_id,) = _RECIPIENT.unpack(payload[16:])
    return UnsubscribeTarget(UUID(bytes=payload[:16]), recipient_id)


def unsubscribe_url(base_url: str, secret: str, campaign_id: UUID, recipient_id: int) -> str:
    return f"{base_url.rstrip('/')}/u/{make_token(secret, campaign_id, recipient_id)}"
