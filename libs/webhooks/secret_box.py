"""Endpoint secrets at rest: encrypted with a key derived from MAILFLEET_SECRET_KEY.

The signing secret has to be readable by the sender (HMAC needs it), so it cannot be
hashed like an API key; a copy of the database alone does not reveal it.
"""

from __future__ import annotations

import hashlib
import hmac

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

_CONTEXT = b"mailfleet webhook endpoint secrets v1"


class SecretUnreadable(ValueError):
    """Stored with another MAILFLEET_SECRET_KEY (or damaged)."""


def _box(secret_key: str) -> SecretBox:
    key = hmac.new(secret_key.encode(), _CONTEXT, hashlib.sha256).digest()
    return SecretBox(key)


def seal(secret_key: str, secret: str) -> bytes:
    return bytes(_box(secret_key).encrypt(secret.encode()))


def open_sealed(secret_key: str, sealed: bytes) -> str:
    try:
        return _box(secret_key).decrypt(sealed).decode()
    except CryptoError as exc:
        raise SecretUnreadable(
            "the endpoint's secret was sealed with another MAILFLEET_SECRET_KEY"
        ) from exc
