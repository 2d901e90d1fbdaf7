"""Pooled connections are released without asyncpg's reset query (`libs.common.db`): it
doubled the cost of every pooled query. That is sound only while no code leaves session
state on a pooled connection; these tests keep it so, and check what the release still does.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from libs.common import db

ROOT = Path(__file__).resolve().parents[2]
# Session state a released connection would carry to its next user.
SESSION_STATE = [
    # A statement of its own: `UPDATE ... SET col = ...` is not session state.
    re.compile(r"""execute\(\s*f?["']{1,3}\s*SET\s+(?!LOCAL\b)""", re.IGNORECASE),
    re.compile(r"set_config\([^)]*,\s*false\s*\)", re.IGNORECASE),
    re.compile(r"\bpg_(try_)?advisory_lock(_shared)?\(", re.IGNORECASE),
    re.compile(r"""["']\s*LISTEN\s"""),
    re.compile(r"\badd_listener\("),
    re.compile(r"\bWITH\s+HOLD\b", re.IGNORECASE),
]
# The migration lock is taken on a connection of its own, never a pooled one.
ALLOWED = {("libs/common/db.py", "SELECT pg_advisory_lock($1)")}


def test_no_code_leaves_session_state_on_a_connection() -> None:
    found = []
    for folder in ("libs", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if "/tests/" in rel:
                continue
            for line in path.read_text().splitlines():
                for pattern in SESSION_STATE:
                    if pattern.search(line) and not any(
                        rel == f and snippet in line for f, snippet in ALLOWED
                    ):
                        found.append(f"{rel}: {line.strip()}")
    assert found == [], "session state on a pooled connection (use SET LOCAL, xact locks)"


def test_the_guard_sees_session_state() -> None:
    lines = [
        """await conn.execute("SET work_mem = '1GB'")""",
        "await conn.execute('SELECT pg_advisory_lock(1)')",
        """await conn.execute("LISTEN changes")""",
    ]
    assert all(any(p.search(line) for p in SESSION_STATE) for line in lines)
    fine = ["""await conn.execute("SET LOCAL work_mem = '1GB'")""", "UPDATE t SET a = 1"]
    assert not any(p.search(line) for p in SESSION_STATE for line in fine)


async def test_a_released_connection_keeps_no_open_transaction(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        await conn.execute("BEGIN")  # left open by a careless caller
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t_release (x int)")
        await conn.execute("INSERT INTO t_release VALUES (1)")
        await pool.release(conn)
        async with pool.acquire() as again:
            assert again.is_in_transaction() is False
            # Rolled back on release: the insert (and the table) are gone.
            assert await again.fetchval("SELECT to_regclass('pg_temp.t_release')") is None
    finally:
        await pool.close()


async def test_release_sends_no_reset_query(database_url: str) -> None:
    """The setting below would be undone by asyncpg's `RESET ALL`; it survives a release,
    which shows the round trip is gone (no code sets such a thing: see the guard above)."""
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT set_config('application_name', 'probe', false)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "probe"
    finally:
        await pool.close()
    plain = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with plain.acquire() as conn:
            await conn.execute("SELECT set_config('application_name', 'probe', false)")
        async with plain.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") != "probe"
    finally:
        await plain.close()
