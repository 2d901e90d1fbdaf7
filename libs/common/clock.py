"""A clock that can be injected: the time (epoch seconds) and a sleep by that time.

`SystemClock` is the real one. `ManualClock` is moved by hand (tests): its sleepers wake
when `advance` passes their deadline, never by the wall clock, so a test of windows and
caps measures against the very clock the code under test reads, without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class ManualClock:
    def __init__(self, start: float) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        entry = (self._now + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self._now += seconds
        for deadline, woken in self._sleepers:
            if deadline <= self._now and not woken.done():
                woken.set_result(None)

    @property
    def sleeping(self) -> int:
        """Tasks asleep on this clock and not yet woken."""
        return sum(1 for _, woken in self._sleepers if not woken.done())
