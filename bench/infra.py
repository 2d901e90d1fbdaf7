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


def peak_rss(pids: dict[str, int]) -> dict[str, int]:
    """Each process's peak resident set size in bytes (Linux `VmHWM`; what the kernel
    recorded since the process started), read while it still runs. 0 where unreadable."""
    peaks = {}
    for name, pid in pids.items():
        peaks[name] = 0
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[name] = int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
    return peaks


async def table_bytes(dsn: str) -> list[tuple[str, int]]:
    """On-disk bytes (heap, TOAST and indexes) of every table, partitions summed into their
    partitioned table, largest first."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT coalesce(pg_partition_root(c.oid), c.oid)::regclass::text AS name,
                   sum(pg_total_relation_size(c.oid))::bigint AS bytes
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r'
             GROUP BY 1 ORDER BY 2 DESC
            """
        )
    finally:
        await conn.close()
    return [(r["name"], int(r["bytes"])) for r in rows]


def print_footprint(
    peaks: dict[str, int], tables: list[tuple[str, int]], recipients: int, top: int = 8
) -> None:
    print("\npeak RSS per service (VmHWM):")
    for name, peak in sorted(peaks.items()):
        print(f"  {name:24} {peak / 2**20:8.1f} MiB")
    total = sum(b for _, b in tables)
    print(f"\nPostgreSQL after the run: {total / 2**20:,.1f} MiB in all tables")
    print(f"  {'table':28} {'MiB':>9} {'bytes/recipient':>16}")
    for name, size in tables[:top]:
        print(f"  {name:28} {size / 2**20:9.1f} {size / max(recipients, 1):16,.0f}")
    print(f"  {'all tables':28} {total / 2**20:9.1f} {total / max(recipients, 1):16,.0f}")
