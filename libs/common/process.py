"""Process-wide settings every service applies once at start: CPU priority and the
garbage collector's view of what was loaded at start."""

from __future__ import annotations

import gc
import os

_frozen = False


def lower_priority(nice: int) -> None:
    """Make this process `nice` steps nicer than it started (only ever lower: raising a
    priority needs privileges). The event-driven services call this; the API and the
    edge, which answer people and mail clients, do not."""
    if nice > 0:
        os.nice(nice)


def freeze_startup_objects() -> None:
    """Take every object alive now (modules, routes, schemas, templates, ...) out of the
    cyclic garbage collector's scans, once the service has started.

    They live as long as the process, so scanning them never frees anything, yet a full
    collection of the API process scanned its ~160k startup objects in ~75 ms: a pause
    that every request in flight waited for, whatever it read (docs/design.md, "The
    API's pauses were full garbage collections"). Collected first, so that no garbage
    of the start is kept for good. Once per process: a test process starts the API's
    lifespan many times, and a later freeze would keep its tests' garbage for good."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
