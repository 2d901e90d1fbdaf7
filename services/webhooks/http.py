"""The HTTP edge of the service: POST one signed body to one endpoint, safely.

- Every address the host resolves to is checked against the target policy at each
  delivery (a name that later points at 127.0.0.1 or 169.254.169.254 is refused), and
  the connection goes to those checked addresses (no second lookup to rebind).
- Redirects are not followed: a 3xx is a failed attempt.
- TLS is always verified: system CAs plus MAILFLEET_WEBHOOK_CA_FILE.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from libs.webhooks.signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER
from libs.webhooks.targets import TargetPolicy, TargetRefused

USER_AGENT = "mailfleet-webhooks/1"
# Only the start of a response is read (for the delivery log); the rest is dropped.
RESPONSE_PEEK_BYTES = 512


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status_code: int | None
    error: str | None


class CheckingResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses the name if any address is not
    allowed (all addresses, not only the first: the client may try any of them)."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        self.policy.check_addresses(host, [ipaddress.ip_address(r["host"]) for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


def ssl_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(
                f"MAILFLEET_WEBHOOK_CA_FILE={ca_file!r} is not a readable PEM file of CA "
                f"certificates: {exc}"
            ) from exc
    return context


class WebhookClient:
    def __init__(self, policy: TargetPolicy, ca_file: str, timeout_s: float) -> None:
        self.policy = policy
        self._ssl = ssl_context(ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckingResolver(self.policy),
            use_dns_cache=False,  # resolved and checked at every delivery
            ssl=self._ssl,
            limit=256,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(
        self, url: str, body: bytes, signature: str, event_id: str, event_type: str
    ) -> Attempt:
        assert self._session is not None, "start() first"
        try:
            self.policy.check_url(url)  # scheme, and a literal address (never resolved)
        except TargetRefused as exc:
            return Attempt(False, None, f"refused: {exc}")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature,
            EVENT_ID_HEADER: event_id,
            EVENT_TYPE_HEADER: event_type,
        }
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.content.read(RESPONSE_PEEK_BYTES)
                status = response.status
        except TargetRefused as exc:
            return Attempt(False, None, f"refused: {exc}")
        except aiohttp.ClientConnectorError as exc:
            refused = exc.os_error if isinstance(exc.os_error, TargetRefused) else None
            if refused is not None:
                return Attempt(False, None, f"refused: {refused}")
            return Attempt(False, None, f"connection failed: {exc}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Attempt(False, None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return Attempt(True, status, None)
        if 300 <= status < 400:
            return Attempt(False, status, f"redirect ({status}) refused: not followed")
        return Attempt(False, status, f"HTTP {status}")
