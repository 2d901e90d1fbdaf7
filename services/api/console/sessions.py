"""Console sessions and CSRF tokens. Pure: no database, no HTTP.

A session is a random token in an HttpOnly cookie; the database keeps only its sha256.
The CSRF token of a session is an HMAC of the session token under the secret key, so it
needs no storage and a token from one session is worthless in another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

SESSION_COOKIE = "mf_session"
LOGIN_COOKIE = "mf_login"  # before sign-in: binds the login form's CSRF token to a browser
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_TOKEN_BYTES = 32
# last_seen_at is written at most this often: an idle timeout of minutes does not need
# a write per request.
TOUCH_EVERY = timedelta(seconds=15)


def new_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def csrf_token(secret: bytes, bound_to: str) -> str:
    return hmac.new(secret, b"csrf:" + bound_to.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, bound_to: str | None, given: str | None) -> bool:
    if not bound_to or not given:
        return False
    return hmac.compare_digest(csrf_token(secret, bound_to), given)


@dataclass(frozen=True)
class Timeouts:
    idle: timedelta
    absolute: timedelta


def expired(created_at: datetime, last_seen_at: datetime, now: datetime, limits: Timeouts) -> bool:
    return now - last_seen_at > limits.idle or now - created_at > limits.absolute


def needs_touch(last_seen_at: datetime, now: datetime) -> bool:
    return now - last_seen_at >= TOUCH_EVERY
