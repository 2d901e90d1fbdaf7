"""A generated admin key is shown on the operator's terminal and appears in no log line."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog
from rich.console import Console

from libs.common import db, devstack
from libs.common.embedded import create_database
from libs.common.settings import Settings
from libs.common.supervisor import Supervisor
from services.api.app import create_app
from services.api.tests.support import running


@pytest.fixture
def structlog_lines() -> Iterator[io.StringIO]:
    """Every structlog line, rendered as in production (JSON), into a buffer."""
    buffer = io.StringIO()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=buffer),
        cache_logger_on_first_use=False,
    )
    yield buffer
    structlog.reset_defaults()


@pytest.fixture
async def empty_database(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A database with no admin key yet, so that the API generates one."""
    name = f"mailfleet_sec_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(postgres_admin_dsn, name)
    await db.migrate(dsn)
    yield dsn
    admin = await asyncpg.connect(postgres_admin_dsn)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_generated_key_reaches_the_terminal_and_no_log(
    settings: Settings,
    empty_database: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    structlog_lines: io.StringIO,
) -> None:
    caplog.set_level(logging.DEBUG)
    terminal = io.StringIO()
    app = create_app(
        settings.model_copy(update={"database_url": empty_database, "bootstrap_api_key": ""}),
        terminal=terminal,
    )
    async with running(app) as client:
        shown = terminal.getvalue()
        key = next(word for word in shown.split() if word.startswith("mf_"))
        answer = await client.get("/api/v1/lists", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200
    printed = capfd.readouterr()
    lines = structlog_lines.getvalue().splitlines()
    assert any("api started" in line for line in lines), "the capture is not working"
    for line in [*lines, *printed.out.splitlines(), *printed.err.splitlines(), caplog.text]:
        assert key not in line
        assert key[10:] not in line  # not even the part after the listed prefix


async def test_without_a_terminal_no_key_is_generated(
    settings: Settings,
    empty_database: str,
    capfd: pytest.CaptureFixture[str],
    structlog_lines: io.StringIO,
) -> None:
    app = create_app(
        settings.model_copy(update={"database_url": empty_database, "bootstrap_api_key": ""})
    )  # stderr is not a tty under pytest
    async with running(app):
        pass
    printed = capfd.readouterr()
    logged = structlog_lines.getvalue()
    assert "MAILFLEET_BOOTSTRAP_API_KEY" in logged
    assert "mf_" not in logged + printed.out + printed.err
    check = await asyncpg.connect(empty_database)
    try:
        assert await check.fetchval("SELECT count(*) FROM api_keys") == 0
    finally:
        await check.close()


def test_dev_banner_shows_the_key_only_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "mf_" + "d" * 43
    password = "p" * 24
    (tmp_path / "admin-key").write_text(key + "\n")

    def banner(terminal: bool) -> str:
        out = io.StringIO()
        monkeypatch.setattr(
            devstack, "console", Console(file=out, force_terminal=terminal, width=200)
        )
        supervisor = Supervisor({}, tmp_path / "logs")
        devstack._print_banner(
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8001",
            key,
            f"admin@mailfleet.local / password {password}",
            "k:9092",
            "pg",
            False,
            tmp_path,
            supervisor,
        )
        return out.getvalue()

    redirected = banner(terminal=False)  # `make dev > dev.log`
    assert key not in redirected and password not in redirected
    assert str(tmp_path / "admin-key") in redirected
    assert str(tmp_path / "admin-password") in redirected
    shown = banner(terminal=True)
    assert key in shown and password in shown
