"""What every benchmark needs: the machine it ran on, a broker and a fresh database."""

from __future__ import annotations

import os
import platform
import uuid
from pathlib import Path

import asyncpg

from libs.common import db
from libs.common.embedded import EmbeddedBroker, EmbeddedPostgres, can_connect, create_database


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


class BenchInfrastructure:
    """A Tansu broker of its own and a fresh, migrated database (on the machine's PostgreSQL,
    or an embedded one when none answers) for one benchmark run."""

    def __init__(self, work: Path) -> None:
        self.broker = EmbeddedBroker(log_path=work / "tansu.log")
        self.work = work
        self.postgres: EmbeddedPostgres | None = None
        self._admin_dsn = ""
        self._database: str | None = None

    async def start(self) -> tuple[str, str]:
        """Returns (Kafka bootstrap, database DSN)."""
        bootstrap = self.broker.start()
        admin_dsn = os.environ.get(
            "MAILFLEET_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        if not await can_connect(admin_dsn):
            self.postgres = EmbeddedPostgres(self.work / "pg")
            admin_dsn = self.postgres.start()
        self._admin_dsn = admin_dsn
        self._database = f"mailfleet_bench_{uuid.uuid4().hex[:8]}"
        dsn = await create_database(admin_dsn, self._database)
        await db.migrate(dsn)
        return bootstrap, dsn

    async def drop_database(self) -> None:
        """Drop the run's database: a benchmark leaves none behind on the machine's server."""
        if self.postgres is None and self._database is not None:
            conn = await asyncpg.connect(self._admin_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)')
            finally:
                await conn.close()

    def stop(self) -> None:
        self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()
