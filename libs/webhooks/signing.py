"""Signing of outbound webhooks, and the check a receiver runs. Pure (stdlib only).

Header (one per request):

    Mailfleet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

The timestamp is the time of the attempt (every retry is signed again), so a receiver
refuses a request whose `t` is further than its tolerance from its own clock: a captured
request cannot be replayed later. Several `v1=` values may appear (one per secret while a
secret is being rotated); a request is genuine if any of them matches.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "Mailfleet-Signature"
EVENT_ID_HEADER = "Mailfleet-Event-Id"
EVENT_TYPE_HEADER = "Mailfleet-Event-Type"
SCHEME = "v1"
# How far a request's timestamp may be from the receiver's clock, either way.
DEFAULT_TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"
MAX_HEADER_LENGTH = 2000


class SignatureError(ValueError):
    """The request is not a genuine, fresh delivery; the message says why."""


def generate_secret() -> str:
    """256 random bits, shown to the admin once."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The value of the Mailfleet-Signature header for `body` sent at `timestamp`."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},{SCHEME}={_mac(secret, t, body)}"


def parse_header(header: str) -> tuple[int, list[str]]:
    """(timestamp, [v1 signatures]) of a header value; SignatureError if malformed."""
    if not header or len(header) > MAX_HEADER_LENGTH:
        raise SignatureError("missing or oversized signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed signature header element {part.strip()!r}")
        if key == "t":
            if not value.isdigit() or timestamp is not None:
                raise SignatureError("the t= element must appear once, as unix seconds")
            timestamp = int(value)
        elif key == SCHEME:
            signatures.append(value)
        # Other schemes are ignored: a newer sender may add them beside v1.
    if timestamp is None:
        raise SignatureError("no t= element in the signature header")
    if not signatures:
        raise SignatureError(f"no {SCHEME}= signature in the signature header")
    return timestamp, signatures


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a delivery as a receiver would: returns its timestamp, or raises
    SignatureError if the signature does not match or the timestamp is outside
    `tolerance_s` of `now` (a replay, or a clock badly off)."""
    timestamp, signatures = parse_header(header)
    expected = _mac(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureError("signature does not match the body and timestamp")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(
            f"timestamp {timestamp} is more than {tolerance_s} s from now: refused as a replay"
        )
    return timestamp
