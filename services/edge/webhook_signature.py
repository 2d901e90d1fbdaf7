"""Checking SendGrid's signed Event Webhook. Pure: the caller passes the clock.

SendGrid signs `timestamp + raw body` with ECDSA (P-256, SHA-256) and sends the signature
and the timestamp in two headers. The verification itself is the SendGrid SDK's own
(`EventWebhook`, over `cryptography`), so it matches what SendGrid computes; this module adds
what the SDK leaves to its caller: a key check at load, missing or malformed headers, a
body that is not text, and refusing old (replayed) posts.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# A signed post older (or further ahead) than this is refused: a captured post cannot be
# replayed later. Generous enough for SendGrid's queueing and modest clock skew.
MAX_AGE_SECONDS = 600.0


class BadVerificationKey(ValueError):
    """The configured key is not a base64 P-256 public key."""


class SignatureRefused(Exception):
    """The post does not prove that SendGrid sent it; the message says why."""


@dataclass(frozen=True)
class WebhookVerifier:
    key: str
    _webhook: Any  # the SDK's EventWebhook, holding the loaded public key
    max_age_seconds: float = MAX_AGE_SECONDS

    @classmethod
    def from_key(cls, key: str, max_age_seconds: float = MAX_AGE_SECONDS) -> WebhookVerifier:
        """`key` as SendGrid shows it: base64 of the DER public key (PEM armour tolerated)."""
        body = "".join(
            line.strip() for line in key.strip().splitlines() if not line.startswith("-----")
        )
        if not body:
            raise BadVerificationKey("the webhook verification key is empty")
        try:
            webhook = EventWebhook(body)
        except ValueError as exc:
            raise BadVerificationKey(
                "the webhook verification key is not a base64 public key as SendGrid shows it"
            ) from exc
        public_key = webhook.public_key
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise BadVerificationKey("the webhook verification key is not a P-256 (ECDSA) key")
        return cls(key=key, _webhook=webhook, max_age_seconds=max_age_seconds)

    def check(self, body: bytes, signature: str | None, timestamp: str | None, now: float) -> None:
        """Return when SendGrid signed `body` at `timestamp` recently; else SignatureRefused."""
        if not signature or not timestamp:
            raise SignatureRefused(
                f"unsigned post: the {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} headers are required"
            )
        try:
            signed_at = int(timestamp)
        except ValueError:
            raise SignatureRefused(f"{TIMESTAMP_HEADER} is not Unix seconds") from None
        age = now - signed_at
        if abs(age) > self.max_age_seconds:
            raise SignatureRefused(
                f"the signature's timestamp is {abs(age):.0f} s "
                f"{'old' if age > 0 else 'in the future'}; "
                f"at most {self.max_age_seconds:.0f} s is accepted"
            )
        try:
            # SendGrid's body is JSON, so UTF-8; the SDK takes text and signs its UTF-8 bytes,
            # which for valid UTF-8 are exactly the bytes received.
            payload = body.decode("utf-8")
            valid = self._webhook.verify_signature(payload, signature, timestamp)
        except (UnicodeDecodeError, binascii.Error, ValueError):
            valid = False
        if not valid:
            raise SignatureRefused("the signature does not match the body and timestamp")
