"""Runs mailfleet's services as child processes and restarts any that dies.

Used by `mailfleet dev` and by the end-to-end tests, which kill children to prove the
guarantees. Each child is `python -m libs.common.cli run <service>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from libs.common.logging import get_logger

log = get_logger(__name__)

GRACE_SECONDS = 30.0


@dataclass
class ChildSpec:
    name: str  # unique: "dispatcher-2"
    service: str  # what `mailfleet run` starts: "dispatcher"
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Child:
    spec: ChildSpec
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    # Cleared while the child is held stopped (an outage on purpose, see `hold`).
    allowed: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(self, base_env: dict[str, str], log_dir: Path, restart: bool = True) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        self.restart = restart
        self.children: dict[str, Child] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self, specs: list[ChildSpec]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in specs:
            child = Child(spec, self.log_dir / f"{spec.name}.log")
            child.allowed.set()
            self.children[spec.name] = child
            await self._spawn(child)
            self._watchers.append(asyncio.create_task(self._watch(child)))

    async def _spawn(self, child: Child) -> None:
        env = {**os.environ, **self.base_env, **child.spec.env}
        with open(child.log_path, "ab") as out:
            child.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "libs.common.cli",
                "run",
                child.spec.service,
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children
            )
        child.starts += 1

    async def _watch(self, child: Child) -> None:
        delay = 0.5
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping or not self.restart:
                return
            if not child.allowed.is_set():
                await child.allowed.wait()  # held: restarted by `release`, not before
                if self._stopping:
                    return
                delay = 0.5
                await self._spawn(child)
                continue
            log.warning("service exited; restarting", child=child.spec.name, code=code)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)
            if self._stopping:
                return
            await self._spawn(child)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to a child (the watcher restarts it). Returns the pid signalled."""
        process = self.children[name].process
        assert process is not None
        process.send_signal(sig)
        return process.pid

    async def hold(self, name: str) -> None:
        """Stop a child gracefully and keep it stopped until `release` (a planned outage)."""
        child = self.children[name]
        child.allowed.clear()
        process = child.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(GRACE_SECONDS):
                await process.wait()

    def release(self, name: str) -> None:
        """Start a held child again (its watcher spawns it)."""
        self.children[name].allowed.set()

    def pids(self) -> dict[str, int]:
        """The pid of each running child."""
        return {
            name: child.process.pid
            for name, child in self.children.items()
            if child.process is not None and child.process.returncode is None
        }

    def alive(self) -> dict[str, bool]:
        return {
            name: child.process is not None and child.process.returncode is None
            for name, child in self.children.items()
        }

    async def stop(self) -> None:
        """SIGTERM everyone, wait for a graceful exit, SIGKILL what is left."""
        self._stopping = True
        running = [c.process for c in self.children.values() if c.process is not None]
        for process in running:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(GRACE_SECONDS):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*(p.wait() for p in running))
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    def tail_logs(self, lines: int = 40) -> str:
        parts = []
        for child in self.children.values():
            if child.log_path.exists():
                text = child.log_path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {child.spec.name} ---\n" + "\n".join(text))
        return "\n".join(parts)
