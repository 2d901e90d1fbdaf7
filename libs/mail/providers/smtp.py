"""SMTP through aiosmtplib: a pool of persistent connections, one message per recipient.

A 5xx answer to a recipient fails that recipient only; 4xx answers, timeouts and dropped
connections are retried on a fresh connection with backoff.
"""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from email.utils import formataddr

import aiosmtplib
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
from libs.mail.messages import Message, Outbox, Sender
from libs.mail.metrics import PROVIDER_REQUEST_SECONDS, PROVIDER_RETRIES
from libs.mail.providers.base import ProgressCallback, failed, sent
from libs.mail.providers.sendgrid import RetryPolicy
from libs.mail.rate_limit import RateLimiter

log = get_logger(__name__)


class _Transient(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def mime_message(sender: Sender, message: Message) -> EmailMessage:
    """multipart/alternative (text, then HTML), UTF-8, with the correlation headers."""
    mime = EmailMessage()
    mime["From"] = formataddr((sender.name or "", sender.email))
    mime["To"] = message.email
    mime["Subject"] = message.subject
    for name, value in message.headers.items():
        mime[name] = value
    # SMTP has no custom_args: correlation ids travel as headers.
    for name, value in message.custom_args.items():
        mime[f"X-Mailfleet-{name.replace('_', '-').title()}"] = value
    mime.set_content(message.text)
    mime.add_alternative(message.html, subtype="html")
    return mime


class SMTPProvider:
    name = "smtp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        starttls: bool,
        max_connections: int,
        timeout_s: float,
        limiter: RateLimiter,
        retry: RetryPolicy,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.breaker = breaker or CircuitBreaker()
        self._host, self._port = host, port
        self._username, self._password = username or None, password or None
        self._starttls = starttls
        self._timeout = timeout_s
        self.limiter = limiter
        self._retry = retry
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            username=self._username,
            password=self._password,
            start_tls=self._starttls,
            timeout=self._timeout,
        )
        await client.connect()
        return client

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            try:
                await client.quit()
            except aiosmtplib.SMTPException:
                client.close()

    async def send(self, outbox: Outbox, on_progress: ProgressCallback) -> list[RecipientOutcome]:
        messages = list(outbox.individual)
        if outbox.templated is not None:
            messages += [outbox.templated.expand(r) for r in outbox.templated.recipients]

        # MIME is built only when a connection is about to be free: a batch's messages are
        # not all held in memory at once.
        building = asyncio.Semaphore(2 * self._max_connections)

        async def one(message: Message) -> RecipientOutcome:
            async with building:
                outcome = await self.send_message(mime_message(outbox.sender, message), message)
            await on_progress([outcome])
            return outcome

        return list(await asyncio.gather(*(one(m) for m in messages)))

    async def send_message(self, mime: EmailMessage, message: Message) -> RecipientOutcome:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self._retry.max_attempts),
            wait=wait_exponential_jitter(
                multiplier=self._retry.initial_s,
                max=self._retry.max_wait_s,
                jitter=self._retry.initial_s,
            ),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        await self.limiter.acquire(1)
                    await self._deliver(mime)
        except _Transient as exc:
            error = f"gave up after {self._retry.max_attempts} attempts: {exc}"
            return failed(message.recipient_id, message.email, error)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0] if exc.recipients else exc
            return failed(message.recipient_id, message.email, f"refused: {refusal}")
        except aiosmtplib.SMTPResponseException as exc:
            return failed(message.recipient_id, message.email, f"{exc.code}: {exc.message}")
        return sent(message.recipient_id, message.email, message.headers.get("Message-ID"))

    async def _deliver(self, mime: EmailMessage) -> None:
        async with self._slots:
            client = self._idle.get_nowait() if not self._idle.empty() else None
            started = time.perf_counter()
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                await client.send_message(mime)
                self.breaker.record_success()
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self.breaker.record_success()  # the server answered: it works
                if any(400 <= r.code < 500 for r in exc.recipients):
                    raise _Transient("throttled", str(exc)) from exc
                raise
            except aiosmtplib.SMTPResponseException as exc:
                self.breaker.record_success()
                if 400 <= exc.code < 500:
                    raise _Transient("server_error", f"{exc.code}: {exc.message}") from exc
                raise
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError) as exc:
                self.breaker.record_failure()
                client = None  # broken: the retry opens a new connection
                raise _Transient("connection", repr(exc)) from exc
            except aiosmtplib.SMTPTimeoutError as exc:
                self.breaker.record_failure()
                client = None
                raise _Transient("timeout", repr(exc)) from exc
            finally:
                PROVIDER_REQUEST_SECONDS.labels(self.name).observe(time.perf_counter() - started)
                if client is not None and client.is_connected:
                    self._idle.put_nowait(client)

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.reason if isinstance(exc, _Transient) else "other"
        PROVIDER_RETRIES.labels(self.name, reason).inc()
