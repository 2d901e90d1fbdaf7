"""Publishing what this instance sees of its providers, for the operators to read.

The circuit breaker and the rate limiter live in each dispatcher's memory; every few
seconds a background task writes a snapshot of them to the `provider_status` table
(through a `StatusStore`), which the console's Settings page shows. Nothing decides on
it: a failed write is logged and the next round tries again, and sends never wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from libs.common.logging import get_logger
from libs.mail.circuit_breaker import BreakerState
from libs.mail.providers.base import Provider

log = get_logger(__name__)


@dataclass(frozen=True)
class ProviderStatus:
    provider: str
    breaker_state: str
    breaker_reason: str | None
    rate_limit_per_s: float
    last_error: str | None
    last_error_at: datetime | None


class StatusStore(Protocol):
    async def publish(self, instance: str, statuses: list[ProviderStatus]) -> None: ...


def snapshot(providers: Mapping[str, Provider]) -> list[ProviderStatus]:
    """The state of each provider's breaker and limiter now."""
    statuses = []
    for name, provider in sorted(providers.items()):
        breaker = provider.breaker
        state = breaker.state
        reason = None
        if state is not BreakerState.CLOSED:
            reason = breaker.outage_reason or breaker.last_error
        at = breaker.last_error_at
        statuses.append(
            ProviderStatus(
                provider=name,
                breaker_state=state.value,
                breaker_reason=reason,
                rate_limit_per_s=provider.limiter.rate,
                last_error=breaker.last_error,
                last_error_at=datetime.fromtimestamp(at, UTC) if at is not None else None,
            )
        )
    return statuses


async def publish_once(
    store: StatusStore, instance: str, providers: Mapping[str, Provider]
) -> bool:
    """One round; a failure is logged, never raised (the status is for reading only)."""
    try:
        await store.publish(instance, snapshot(providers))
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, sending goes on
        log.warning("provider status not published", instance=instance, error=repr(exc))
        return False
    return True


async def publish_provider_status(
    store: StatusStore,
    instance: str,
    providers: Mapping[str, Provider],
    stop: asyncio.Event,
    every_s: float,
) -> None:
    """Publish every `every_s` seconds until `stop`."""
    while not stop.is_set():
        await publish_once(store, instance, providers)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
