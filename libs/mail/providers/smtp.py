"""SMTP through aiosmtplib: a pool of persistent connections, one message per recipient.

TLS: STARTTLS (the default) or implicit TLS (port 465), the server's certificate verified
against the system's CAs plus `ca_file`; `none` only for a local relay.

A 5xx answer to a recipient fails that recipient only (to `RCPT` or `DATA`, a permanent
status about the address, 5.1.1 and the like, is a hard bounce: see `libs.mail.bounces`);
4xx answers, and timeouts or dropped connections before `DATA`, are retried on a fresh connection with backoff. A connection
lost or timed out once `DATA` began may have delivered the message: the recipient is
`unknown`, retried only in at-least-once mode (`retry_ambiguous`). A refused login (535) or
a certificate that fails verification is the account's or the configuration's fault, not
the recipient's: `AccountRefused`.

With a bounce domain, the envelope sender is the recipient's VERP address, so that a later
DSN names the campaign and recipient it is about.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.message import Message as MIMEMessage
from email.utils import formataddr
from typing import Any, Literal

import aiosmtplib
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from libs.common.events import RecipientOutcome
from libs.common.logging import get_logger
from libs.mail.bounces import classify_reply, hard_bounce_error
from libs.mail.circuit_breaker import CircuitBreaker
from libs.mail.dkim_signing import DkimSigner
from libs.mail.messages import Message, Outbox, Sender
from libs.mail.metrics import PROVIDER_REQUEST_SECONDS, PROVIDER_RETRIES, start_provider_series
from libs.mail.providers.base import (
    AccountRefused,
    ProgressCallback,
    failed,
    send_all,
    sent,
    unknown,
)
from libs.mail.providers.sendgrid import AMBIGUOUS_NOTE, RetryPolicy
from libs.mail.rate_limit import RateLimiter

log = get_logger(__name__)


SMTPTLSMode = Literal["starttls", "implicit", "none"]
# 530: authentication required, 534: mechanism too weak, 535: credentials invalid.
_AUTH_CODES = frozenset({530, 534, 535})

# The envelope sender for a message (its VERP address), or None for the From address.
EnvelopeSender = Callable[[Message], str | None]


def tls_mode(setting: str, port: int) -> SMTPTLSMode:
    """SMTP_TLS: "auto" is implicit TLS on 465 (SMTPS), STARTTLS on any other port."""
    if setting == "auto":
        return "implicit" if port == 465 else "starttls"
    if setting not in ("starttls", "implicit", "none"):
        raise ValueError(f"SMTP_TLS must be auto, starttls, implicit or none, not {setting!r}")
    return setting  # type: ignore[return-value]


class _Transient(Exception):
    """Worth retrying; `ambiguous` when the message may have been delivered."""

    def __init__(self, reason: str, detail: str, *, ambiguous: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.ambiguous = ambiguous


class _Client(aiosmtplib.SMTP):
    """Knows whether the current message reached `DATA` (past it, a lost connection may
    have delivered the message)."""

    data_started = False

    async def data(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.data_started = True
        return await super().data(*args, **kwargs)


# A connection cut during the handshake: the network's fault, retried like any other.
_TLS_CUT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS configuration error behind a connect failure, if any (aiosmtplib wraps it):
    a certificate that fails verification, a server that speaks no TLS on the port."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return None if isinstance(seen, _TLS_CUT) else seen
        seen = seen.__cause__ or seen.__context__
    return None


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
        tls: SMTPTLSMode,
        max_connections: int,
        timeout_s: float,
        limiter: RateLimiter,
        retry: RetryPolicy,
        breaker: CircuitBreaker | None = None,
        ca_file: str = "",
        retry_ambiguous: bool = False,
        envelope_sender: EnvelopeSender | None = None,
        signer: DkimSigner | None = None,
    ) -> None:
        start_provider_series(self.name)
        self.breaker = breaker or CircuitBreaker()
        self._host, self._port = host, port
        self._username, self._password = username or None, password or None
        self._tls = tls
        self._ca_file = ca_file or None
        self._retry_ambiguous = retry_ambiguous
        self._envelope_sender = envelope_sender
        self._signer = signer or DkimSigner([])
        self._timeout = timeout_s
        self.limiter = limiter
        self._retry = retry
        self._idle: asyncio.Queue[_Client] = asyncio.Queue()
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)

    async def _connect(self) -> _Client:
        client = _Client(
            hostname=self._host,
            port=self._port,
            username=self._username,
            password=self._password,
            use_tls=self._tls == "implicit",
            # False, not None: aiosmtplib's None means "upgrade if offered", unverified.
            start_tls=self._tls == "starttls",
            validate_certs=True,
            cert_bundle=self._ca_file,
            timeout=self._timeout,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code in _AUTH_CODES:
                raise self._refused(f"{exc.code}: {exc.message}") from exc
            raise
        except (aiosmtplib.SMTPException, OSError) as exc:
            if (tls_error := _tls_failure(exc)) is not None:
                raise self._refused(f"TLS: {tls_error}") from exc
            if "STARTTLS extension not supported" in str(exc):
                raise self._refused(str(exc)) from exc
            raise
        return client

    def _refused(self, reason: str) -> AccountRefused:
        self.breaker.trip(reason)
        log.error("SMTP server refused the account", provider=self.name, reason=reason)
        return AccountRefused(reason)

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

        async def one(message: Message) -> list[RecipientOutcome]:
            async with building:
                mime = self._signer.sign(mime_message(outbox.sender, message))
                return [await self.send_message(mime, message)]

        return await send_all(self.name, messages, one, on_progress)

    async def send_message(self, mime: MIMEMessage, message: Message) -> RecipientOutcome:
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._worth_retrying),
            stop=stop_after_attempt(self._retry.max_attempts),
            wait=wait_exponential_jitter(
                multiplier=self._retry.initial_s,
                max=self._retry.max_wait_s,
                jitter=self._retry.initial_s,
            ),
            before_sleep=self._count_retry,
            reraise=True,
        )
        ambiguous: list[_Transient] = []
        envelope = self._envelope_sender(message) if self._envelope_sender else None
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        await self.limiter.acquire(1)
                    try:
                        await self._deliver(mime, envelope)
                    except _Transient as exc:
                        if exc.ambiguous:
                            ambiguous.append(exc)
                        raise
        except _Transient as exc:
            if ambiguous:
                error = f"{ambiguous[0].reason} after DATA: {ambiguous[0]}; {AMBIGUOUS_NOTE}"
                log.warning("SMTP outcome ambiguous", provider=self.name, error=error)
                return unknown(message.recipient_id, message.email, error)
            error = f"gave up after {self._retry.max_attempts} attempts: {exc}"
            return failed(message.recipient_id, message.email, error)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0] if exc.recipients else None
            if refusal is not None and classify_reply(refusal.code, refusal.message) == "hard":
                return failed(
                    message.recipient_id,
                    message.email,
                    hard_bounce_error(refusal.code, refusal.message),
                )
            return failed(message.recipient_id, message.email, f"refused: {refusal or exc}")
        except aiosmtplib.SMTPResponseException as exc:
            # Only an answer to DATA names the recipient; a refused MAIL FROM or greeting is
            # about us, never a bounce.
            is_data = isinstance(exc, aiosmtplib.SMTPDataError)
            if is_data and classify_reply(exc.code, exc.message) == "hard":
                error = hard_bounce_error(exc.code, exc.message)
            else:
                error = f"{exc.code}: {exc.message}"
            return failed(message.recipient_id, message.email, error)
        return sent(message.recipient_id, message.email, message.headers.get("Message-ID"))

    async def _deliver(self, mime: MIMEMessage, envelope_sender: str | None = None) -> None:
        async with self._slots:
            client = self._idle.get_nowait() if not self._idle.empty() else None
            if client is not None:
                client.data_started = False
            started = time.perf_counter()
            try:
                if client is None or not client.is_connected:
                    client = None
                    client = await self._connect()
                await client.send_message(mime, sender=envelope_sender)
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
            except aiosmtplib.SMTPTimeoutError as exc:  # before OSError: a TimeoutError is one
                self.breaker.record_failure(repr(exc))
                in_data = client is not None and client.data_started
                if client is not None:
                    client.close()
                client = None
                raise _Transient("timeout", repr(exc), ambiguous=in_data) from exc
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError) as exc:
                self.breaker.record_failure(repr(exc))
                in_data = client is not None and client.data_started
                client = None  # broken: the retry opens a new connection
                raise _Transient("connection", repr(exc), ambiguous=in_data) from exc
            finally:
                PROVIDER_REQUEST_SECONDS.labels(self.name).observe(time.perf_counter() - started)
                if client is not None and client.is_connected:
                    self._idle.put_nowait(client)

    def _worth_retrying(self, exc: BaseException) -> bool:
        if not isinstance(exc, _Transient):
            return False
        return self._retry_ambiguous or not exc.ambiguous

    def _count_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.reason if isinstance(exc, _Transient) else "other"
        PROVIDER_RETRIES.labels(self.name, reason).inc()
