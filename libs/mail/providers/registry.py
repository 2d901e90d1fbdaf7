"""Build the providers a dispatcher can send through, from the settings."""

from __future__ import annotations

import aiohttp

from libs.common.settings import Settings
from libs.mail.bounces import verp_sender_for
from libs.mail.circuit_breaker import CircuitBreaker
from libs.mail.config import DispatcherSettings
from libs.mail.dkim_signing import DkimSigner, load_keys
from libs.mail.providers.base import Provider
from libs.mail.providers.sendgrid import RetryPolicy, SendGridProvider
from libs.mail.providers.smtp import SMTPProvider, tls_mode
from libs.mail.rate_limit import RateLimiter


def build_providers(
    settings: Settings, extra: DispatcherSettings, session: aiohttp.ClientSession
) -> dict[str, Provider]:
    retry = RetryPolicy(
        max_attempts=extra.provider_max_attempts,
        initial_s=extra.provider_retry_initial_s,
        max_wait_s=extra.provider_retry_max_s,
    )

    # At-least-once: a request that may have been accepted is sent again (duplicates
    # allowed); at-most-once: its recipients end `unknown`.
    retry_ambiguous = settings.delivery_mode == "at_least_once"

    def breaker() -> CircuitBreaker:
        return CircuitBreaker(extra.breaker_failures, extra.breaker_cooldown_s)

    def sendgrid_api(name: str, url: str, rate: float) -> SendGridProvider:
        return SendGridProvider(
            name,
            url,
            settings.sendgrid_api_key,
            session,
            concurrency=settings.provider_concurrency,
            limiter=RateLimiter(rate),
            retry=retry,
            timeout_s=extra.provider_timeout_s,
            breaker=breaker(),
            retry_ambiguous=retry_ambiguous,
        )

    providers: dict[str, Provider] = {
        "sendgrid": sendgrid_api(
            "sendgrid", settings.sendgrid_api_url, extra.sendgrid_rate_per_sec
        ),
        # The sink speaks SendGrid's API: the same client, pointed at the local server.
        "sink": sendgrid_api("sink", settings.sink_url, extra.sink_rate_per_sec),
        "smtp": SMTPProvider(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            tls=tls_mode(settings.smtp_tls, settings.smtp_port),
            ca_file=settings.smtp_ca_file,
            max_connections=extra.smtp_max_connections,
            timeout_s=extra.smtp_timeout_s,
            limiter=RateLimiter(extra.smtp_rate_per_sec),
            retry=retry,
            breaker=breaker(),
            retry_ambiguous=retry_ambiguous,
            # VERP needs both: the token is signed with the secret key.
            envelope_sender=verp_sender_for(settings.secret_key, settings.bounce_domain)
            if settings.bounce_domain and settings.secret_key
            else None,
            signer=DkimSigner(load_keys(settings.dkim_keys)),
        ),
    }
    return providers
