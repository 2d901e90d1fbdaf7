"""SendGrid v3 over aiohttp with keep-alive: the `sendgrid` and `sink` providers.

Retries (tenacity): 5xx, timeouts and connection errors back off exponentially with jitter;
429 waits as the rate-limit headers say and slows the instance's rate limiter (AIMD). Any
other 4xx fails the request's recipients with SendGrid's own error messages.
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
    retry_if_exception_type,
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
)
from libs.mail.providers.base import ProgressCallback, failed, sent
from libs.mail.providers.sendgrid_payload import (
    Payload,
    message_payload,
    templated_payloads,
)
from libs.mail.rate_limit import RateLimiter

log = get_logger(__name__)

MAIL_SEND_PATH = "/v3/mail/send"
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    initial_s: float = 0.2
    max_wait_s: float = 10.0


class RetryableResponse(Exception):
    """A provider answer worth retrying; `wait_s` when the provider said how long to wait."""

    def __init__(self, reason: str, detail: str, wait_s: float | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.wait_s = wait_s


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
    ) -> None:
        self.name = name
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
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def close(self) -> None:
        """The session belongs to the caller."""

    async def send(self, outbox: Outbox, on_progress: ProgressCallback) -> list[RecipientOutcome]:
        requests: list[tuple[Payload, list[Recipient]]] = []
        if outbox.templated is not None:
            for payload, chunk in templated_payloads(outbox.sender, outbox.templated):
                requests.append((payload, [Recipient(r.recipient_id, r.email) for r in chunk]))
        for message in outbox.individual:
            requests.append(
                (
                    message_payload(outbox.sender, message),
                    [Recipient(message.recipient_id, message.email)],
                )
            )

        async def one(payload: Payload, recipients: list[Recipient]) -> list[RecipientOutcome]:
            outcomes = await self.post(payload, recipients)
            await on_progress(outcomes)
            return outcomes

        results = await asyncio.gather(*(one(p, r) for p, r in requests))
        return [outcome for outcomes in results for outcome in outcomes]

    async def post(
        self, payload: Payload, recipients: Sequence[Recipient]
    ) -> list[RecipientOutcome]:
        """POST one payload, retrying what is worth retrying; outcomes for its recipients."""
        body = orjson.dumps(payload)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableResponse),
            stop=stop_after_attempt(self._retry.max_attempts),
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        await self.limiter.acquire(len(recipients))
                    status, message_id, error = await self._post_once(body)
        except RetryableResponse as exc:
            error = f"gave up after {self._retry.max_attempts} attempts: {exc}"
            return [failed(r.recipient_id, r.email, error) for r in recipients]
        if status == 202:
            return [sent(r.recipient_id, r.email, message_id) for r in recipients]
        return [failed(r.recipient_id, r.email, f"{status}: {error}") for r in recipients]

    async def _post_once(self, body: bytes) -> tuple[int, str | None, str]:
        async with self._slots:
            started = time.perf_counter()
            try:
                async with self._session.post(
                    self.url, data=body, headers=self._headers, timeout=self._timeout
                ) as response:
                    answer = await response.read()
            except TimeoutError as exc:
                self.breaker.record_failure()
                raise RetryableResponse("timeout", "request timed out") from exc
            except aiohttp.ClientError as exc:
                self.breaker.record_failure()
                raise RetryableResponse("connection", f"connection error: {exc!r}") from exc
            finally:
                PROVIDER_REQUEST_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        if response.status == 429:
            PROVIDER_THROTTLED.labels(self.name).inc()
            self.limiter.throttled()
            wait = _throttle_wait(response.headers, self._retry.max_wait_s)
            raise RetryableResponse("throttled", "429: " + provider_errors(answer), wait)
        if response.status >= 500:
            self.breaker.record_failure()
            raise RetryableResponse("server_error", f"{response.status}: {provider_errors(answer)}")
        # Any answer below 500 (a 429, a rejected payload) shows a working provider.
        self.breaker.record_success()
        if response.status == 202:
            self.limiter.succeeded()
            return 202, response.headers.get("X-Message-Id"), ""
        return response.status, None, provider_errors(answer)

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
