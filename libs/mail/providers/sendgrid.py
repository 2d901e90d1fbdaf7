"""SendGrid v3 over aiohttp with keep-alive: the `sendgrid` and `sink` providers.

Only what is proven unsent is retried (tenacity, exponential backoff with jitter): a
connection that could not be opened, a 429 (waits as the rate-limit headers say and slows
the instance's rate limiter, AIMD), and SendGrid's own 500 and 503 answers. An outcome that
may have been accepted (a read timeout, a connection dropped once the request was written,
a gateway's 502/504) makes the request's recipients `unknown`, and is retried only in
at-least-once mode (`retry_ambiguous`). 401, 403 and 413 refuse the account, not the
recipients: `AccountRefused`, which the send turns into a `ProviderOutage`. Any other 4xx
fails the request's recipients with SendGrid's own error messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from libs.common.events import RecipientOutcome
from libs.common.logging import get_logger
from libs.mail.circuit_breaker import CircuitBreaker
from libs.mail.messages import Outbox
from libs.mail.metrics import (
    PROVIDER_REQUEST_SECONDS,
    PROVIDER_RETRIES,
    PROVIDER_THROTTLED,
    start_provider_series,
)
from libs.mail.providers.base import (
    AccountRefused,
    Addressee,
    ProgressCallback,
    all_sent,
    failed,
    send_all,
    unknown,
)
from libs.mail.providers.sendgrid_payload import (
    Payload,
    message_payload,
    templated_payloads,
    without_sendgrid_tracking,
)
from libs.mail.rate_limit import RateLimiter

log = get_logger(__name__)

MAIL_SEND_PATH = "/v3/mail/send"
_MAX_ERROR_CHARS = 500
# SendGrid's own "not processed" answers (500: an error on a SendGrid server, 503: the API is
# not available). A 502 or 504 comes from a gateway that may have passed the request on.
_UNSENT_SERVER_ERRORS = frozenset({500, 503})
# The account, not the recipients: a bad or revoked key (401), a key without the mail.send
# scope or a suspended account (403), a request over the account's size limit (413).
_ACCOUNT_REFUSALS = frozenset({401, 403, 413})
AMBIGUOUS_NOTE = "the provider may or may not have accepted it"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_s: float = 0.2
    max_wait_s: float = 10.0


class RetryableResponse(Exception):
    """A provider answer worth retrying; `wait_s` when the provider said how long to wait.
    `ambiguous`: the request may have been accepted (retried only in at-least-once mode)."""

    def __init__(
        self, reason: str, detail: str, wait_s: float | None = None, *, ambiguous: bool = False
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.wait_s = wait_s
        self.ambiguous = ambiguous


@dataclass(frozen=True)
class Recipient:
    recipient_id: int
    email: str


def _throttle_wait(headers: Mapping[str, str], max_wait_s: float) -> float | None:
    """Seconds to wait after a 429, from Retry-After or SendGrid's X-RateLimit-Reset.

    `headers` must look names up case-insensitively (aiohttp's do).
    """
    try:
        if (retry_after := headers.get("Retry-After")) is not None:
            return min(max_wait_s, max(0.0, float(retry_after)))
        if (reset := headers.get("X-RateLimit-Reset")) is not None:
            return min(max_wait_s, max(0.0, float(reset) - time.time()))
    except ValueError:
        return None
    return None


def provider_errors(body: bytes) -> str:
    """SendGrid's error messages (`{"errors": [{"message", "field"}]}`), else the raw body."""
    try:
        errors = orjson.loads(body).get("errors") or []
        parts = [
            f"{e.get('field')}: {e.get('message')}" if e.get("field") else str(e.get("message"))
            for e in errors
            if isinstance(e, dict)
        ]
        if parts:
            return "; ".join(parts)[:_MAX_ERROR_CHARS]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return body.decode(errors="replace")[:_MAX_ERROR_CHARS]


class SendGridProvider:
    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        session: aiohttp.ClientSession,
        *,
        concurrency: int,
        limiter: RateLimiter,
        retry: RetryPolicy,
        timeout_s: float = 30.0,
        breaker: CircuitBreaker | None = None,
        retry_ambiguous: bool = False,
    ) -> None:
        self.name = name
        start_provider_series(name)
        self.breaker = breaker or CircuitBreaker()
        self.url = base_url.rstrip("/") + MAIL_SEND_PATH
        self._headers = {
            "Authorization": f"Bearer {api_key or 'mailfleet'}",
            "Content-Type": "application/json",
        }
        self._session = session
        self._slots = asyncio.Semaphore(concurrency)
        self.limiter = limiter
        self._retry = retry
        self._retry_ambiguous = retry_ambiguous
        # No `total`: a timeout while waiting for or opening a connection (nothing sent) must
        # stay apart from one while waiting for the answer (maybe accepted).
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
        )

    async def close(self) -> None:
        """The session belongs to the caller."""

    async def send(self, outbox: Outbox, on_progress: ProgressCallback) -> list[RecipientOutcome]:
        requests: list[tuple[Payload, Sequence[Addressee]]] = []
        if outbox.templated is not None:
            for payload, chunk in templated_payloads(outbox.sender, outbox.templated):
                requests.append((payload, chunk))
        for message in outbox.individual:
            requests.append(
                (
                    message_payload(outbox.sender, message),
                    [Recipient(message.recipient_id, message.email)],
                )
            )
        if outbox.own_tracking:
            requests = [(without_sendgrid_tracking(p), r) for p, r in requests]

        async def one(request: tuple[Payload, Sequence[Addressee]]) -> list[RecipientOutcome]:
            return await self.post(*request)

        return await send_all(self.name, requests, one, on_progress)

    async def post(
        self, payload: Payload, recipients: Sequence[Addressee]
    ) -> list[RecipientOutcome]:
        """POST one payload, retrying what is proven unsent; outcomes for its recipients.
        Raises `AccountRefused` on an auth or configuration error."""
        body = orjson.dumps(payload)
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._worth_retrying),
            stop=stop_after_attempt(self._retry.max_attempts),
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        ambiguous: list[RetryableResponse] = []
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        await self.limiter.acquire(len(recipients))
                    try:
                        status, message_id, error = await self._post_once(body)
                    except RetryableResponse as exc:
                        if exc.ambiguous:
                            ambiguous.append(exc)
                        raise
        except RetryableResponse as exc:
            if ambiguous:
                # Once one attempt may have been accepted, no later failure proves otherwise.
                error = f"{ambiguous[0].reason}: {ambiguous[0]}; {AMBIGUOUS_NOTE}"
                log.warning("provider outcome ambiguous", provider=self.name, error=error,
                            recipients=len(recipients))  # fmt: skip
                return [unknown(r.recipient_id, r.email, error) for r in recipients]
            error = f"gave up after {self._retry.max_attempts} attempts: {exc}"
            return [failed(r.recipient_id, r.email, error) for r in recipients]
        if status == 202:
            return all_sent(recipients, message_id)
        return [failed(r.recipient_id, r.email, f"{status}: {error}") for r in recipients]

    async def _post_once(self, body: bytes) -> tuple[int, str | None, str]:
        async with self._slots:
            started = time.perf_counter()
            try:
                async with self._session.post(
                    self.url, data=body, headers=self._headers, timeout=self._timeout
                ) as response:
                    answer = await response.read()
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # The connection was never opened: nothing was sent.
                self.breaker.record_failure(f"connection error: {exc!r}")
                raise RetryableResponse("connection", f"connection error: {exc!r}") from exc
            except TimeoutError as exc:
                self.breaker.record_failure("no answer within the timeout")
                raise RetryableResponse(
                    "timeout", "no answer within the timeout", ambiguous=True
                ) from exc
            except aiohttp.ClientError as exc:
                # Reset or closed once the request was (maybe) written.
                self.breaker.record_failure(f"connection lost: {exc!r}")
                raise RetryableResponse(
                    "connection", f"connection lost: {exc!r}", ambiguous=True
                ) from exc
            finally:
                PROVIDER_REQUEST_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        if response.status in _ACCOUNT_REFUSALS:
            reason = f"{response.status}: {provider_errors(answer)}"
            self.breaker.trip(reason)
            log.error("provider refused the account", provider=self.name, reason=reason)
            raise AccountRefused(reason)
        if response.status == 429:
            PROVIDER_THROTTLED.labels(self.name).inc()
            self.limiter.throttled()
            wait = _throttle_wait(response.headers, self._retry.max_wait_s)
            raise RetryableResponse("throttled", "429: " + provider_errors(answer), wait)
        if response.status >= 500:
            reason = f"{response.status}: {provider_errors(answer)}"
            self.breaker.record_failure(reason)
            raise RetryableResponse(
                "server_error",
                reason,
                ambiguous=response.status not in _UNSENT_SERVER_ERRORS,
            )
        # Any answer below 500 (a 429, a rejected payload) shows a working provider.
        self.breaker.record_success()
        if response.status == 202:
            self.limiter.succeeded()
            return 202, response.headers.get("X-Message-Id"), ""
        return response.status, None, provider_errors(answer)

    def _worth_retrying(self, exc: BaseException) -> bool:
        if not isinstance(exc, RetryableResponse):
            return False
        return self._retry_ambiguous or not exc.ambiguous

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableResponse) and exc.wait_s is not None:
            return exc.wait_s
        backoff = wait_exponential_jitter(
            multiplier=self._retry.initial_s,
            max=self._retry.max_wait_s,
            jitter=self._retry.initial_s,
        )
        return float(backoff(state))

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.reason if isinstance(exc, RetryableResponse) else "other"
        PROVIDER_RETRIES.labels(self.name, reason).inc()
        log.warning(
            "provider request retried",
            provider=self.name,
            reason=reason,
            attempt=state.attempt_number,
            error=str(exc),
        )
