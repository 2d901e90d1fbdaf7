"""Whether provider webhook posts must be signed. Pure: decided once, at start.

Posts are verified with SENDGRID_WEBHOOK_VERIFICATION_KEY when it is set. Without a key
they are refused, unless MAILFLEET_ALLOW_UNSIGNED_WEBHOOKS=true outside production (local
and test setups), which the edge warns about at start: an unsigned webhook lets anyone
fake bounces, spam reports, opens and clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.settings import Settings
from services.edge.webhook_signature import BadVerificationKey, WebhookVerifier

UNSIGNED_WARNING = (
    "MAILFLEET_ALLOW_UNSIGNED_WEBHOOKS=true: webhook posts are accepted without a signature; "
    "anyone who can reach the edge can fake provider events. Set "
    "SENDGRID_WEBHOOK_VERIFICATION_KEY instead outside local setups."
)
NO_KEY_WARNING = (
    "SENDGRID_WEBHOOK_VERIFICATION_KEY is not set: every webhook post is refused (503, so "
    "that SendGrid retries it once the key is set)."
)


class WebhookMisconfigured(ValueError):
    """The settings ask for something unsafe or unusable; the message names the setting."""


@dataclass(frozen=True)
class WebhookPolicy:
    verifier: WebhookVerifier | None
    accept_unsigned: bool

    @property
    def warning(self) -> str | None:
        """What to log at start, or None when posts are verified."""
        if self.verifier is not None:
            return None
        return UNSIGNED_WARNING if self.accept_unsigned else NO_KEY_WARNING


def webhook_policy(settings: Settings) -> WebhookPolicy:
    key = settings.sendgrid_webhook_verification_key
    if key:
        try:
            return WebhookPolicy(WebhookVerifier.from_key(key), accept_unsigned=False)
        except BadVerificationKey as exc:
            raise WebhookMisconfigured(f"SENDGRID_WEBHOOK_VERIFICATION_KEY: {exc}") from exc
    if settings.allow_unsigned_webhooks and settings.environment == "production":
        raise WebhookMisconfigured(
            "MAILFLEET_ALLOW_UNSIGNED_WEBHOOKS=true is refused with MAILFLEET_ENV=production: "
            "set SENDGRID_WEBHOOK_VERIFICATION_KEY to the key of SendGrid's signed Event Webhook"
        )
    return WebhookPolicy(None, accept_unsigned=settings.allow_unsigned_webhooks)
