"""The ledger writes that wait out a database outage (issue 11, item 4): a unit test with a
ledger that refuses connections a given number of times (the e2e proof is the chaos case)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from libs.common.events import RecipientOutcome
from services.dispatcher.durable_ledger import DurableLedgerWrites
from services.dispatcher.ledger import Claim


class FlakyLedger:
    def __init__(self, refusals: int, error: Exception | None = None) -> None:
        self.refusals = refusals
        self.error = error or ConnectionRefusedError(111, "Connect call failed")
        self.finished: list[tuple[Any, ...]] = []
        self.progress: list[list[RecipientOutcome]] = []

    def _maybe_refuse(self) -> None:
        if self.refusals > 0:
            self.refusals -= 1
            raise self.error

    async def finish(self, claim: Claim, result: Any) -> bool:
        self._maybe_refuse()
        self.finished.append((claim, result))
        return True

    async def add_progress(self, claim: Claim, outcomes: list[RecipientOutcome]) -> bool:
        self._maybe_refuse()
        self.progress.append(outcomes)
        return True

    async def get(self, batch_id: str) -> str:
        return f"entry of {batch_id}"


def outcome(n: int) -> RecipientOutcome:
    return RecipientOutcome(recipient_id=n, email=f"r{n}@example.com", status="sent")


async def test_a_result_the_database_refused_is_written_once_it_is_back() -> None:
    ledger = FlakyLedger(refusals=3)
    durable = DurableLedgerWrites(ledger, retry_s=0.01)
    claim = Claim("b:1", "me", 1)
    assert await asyncio.wait_for(durable.finish(claim, {"ok": True}), 10)
    assert ledger.finished == [(claim, {"ok": True})]
    assert await durable.get("b:1") == "entry of b:1"  # everything else passes through


async def test_an_error_that_is_not_an_outage_is_raised_at_once() -> None:
    ledger = FlakyLedger(refusals=1, error=asyncpg.DataError("bad data"))
    durable = DurableLedgerWrites(ledger, retry_s=0.01)
    with pytest.raises(asyncpg.DataError):
        await durable.finish(Claim("b:2", "me", 1), {})
    assert ledger.finished == []


async def test_progress_the_database_refused_never_fails_the_send_and_goes_with_the_next() -> None:
    ledger = FlakyLedger(refusals=1, error=asyncpg.ConnectionDoesNotExistError("closed"))
    durable = DurableLedgerWrites(ledger, retry_s=0.01)
    claim = Claim("b:3", "me", 1)
    assert await durable.add_progress(claim, [outcome(1), outcome(2)])
    assert await durable.add_progress(claim, [outcome(3)])
    assert [[o.recipient_id for o in batch] for batch in ledger.progress] == [[1, 2, 3]]
