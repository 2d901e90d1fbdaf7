"""Ledger writes that outlive a database outage (issue 11, item 4).

Once a provider has accepted a batch, its result exists only in this process until the
ledger says `done`. If that write fails because PostgreSQL is away, giving up would leave
the row `sending`, and the batch's next reading would call every recipient `unknown`
although all were delivered. So a `finish` the database could not take is kept here and
written again, with backoff, until the database is back; the batch's handler waits for
it, so its offset is not committed before. Progress writes (a safety net for a crash in
the middle of a batch) never fail the send that reports them: what the database could not
take is kept and written with the next progress, or with `finish`, which has it all.

Only an unavailable database is waited out: any other error (a fenced write refused, bad
data) is raised as before. Everything else is handed to the wrapped ledger unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from libs.common import db
from libs.common.events import RecipientOutcome
from libs.common.logging import get_logger
from services.dispatcher.ledger import Claim
from services.dispatcher.metrics import LEDGER_WRITES_HELD

log = get_logger(__name__)

_RETRY_S = 0.5
_RETRY_MAX_S = 5.0
# A progress write waits no longer than this: the send it reports on must not stall.
_PROGRESS_TIMEOUT_S = 2.0


class _Writes(Protocol):
    async def add_progress(self, claim: Claim, outcomes: list[RecipientOutcome]) -> bool: ...
    async def finish(self, claim: Claim, result: Any) -> bool: ...


class DurableLedgerWrites:
    def __init__(self, ledger: _Writes, *, retry_s: float = _RETRY_S) -> None:
        self._ledger = ledger
        self._retry_s = retry_s
        self._progress: dict[str, list[RecipientOutcome]] = {}

    def __getattr__(self, name: str) -> Any:
        # Reads, claims and take-overs go to the ledger unchanged (an error there happens
        # before anything is sent, and the consumer waits the outage out).
        return getattr(self._ledger, name)

    async def finish(self, claim: Claim, result: Any) -> bool:
        """The ledger's `finish` (fenced by the claim), written whenever the database takes
        it; False when the claim was lost."""
        self._progress.pop(claim.batch_id, None)  # the result has every outcome
        written: bool = await self._until_written(
            claim.batch_id, lambda: self._ledger.finish(claim, result)
        )
        return written

    async def add_progress(self, claim: Claim, outcomes: list[RecipientOutcome]) -> bool:
        """True unless the claim was lost (progress the database could not take is kept,
        and the claim taken to be held: the lease says otherwise soon enough)."""
        pending = self._progress.pop(claim.batch_id, []) + outcomes
        try:
            added: bool = await asyncio.wait_for(
                self._ledger.add_progress(claim, pending), _PROGRESS_TIMEOUT_S
            )
            return added
        except Exception as exc:
            if not (db.is_unavailable(exc) or isinstance(exc, TimeoutError)):
                raise
            self._progress[claim.batch_id] = pending
            log.warning("progress kept in memory: database unavailable", held=len(pending))
            return True

    async def _until_written(self, batch_id: str, write: Callable[[], Awaitable[Any]]) -> Any:
        delay = self._retry_s
        held = False
        try:
            while True:
                try:
                    result = await write()
                except Exception as exc:
                    if not db.is_unavailable(exc):
                        raise
                    if not held:
                        held = True
                        LEDGER_WRITES_HELD.inc()
                        log.warning(
                            "batch result kept in memory until the database is back",
                            batch_id=batch_id,
                            error=repr(exc),
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                if held:
                    log.info("batch result written after the database came back", batch_id=batch_id)
                return result
        finally:
            if held:
                LEDGER_WRITES_HELD.dec()
