"""`make dev` gives the console a first admin and tells the person, not the logs."""

from __future__ import annotations

from pathlib import Path

from libs.common.devstack import DEV_ADMIN_EMAIL, _console_admin
from libs.common.settings import Settings


def test_a_generated_password_is_kept_for_the_next_start(tmp_path: Path) -> None:
    first_env: dict[str, str] = {}
    told = _console_admin(Settings(), tmp_path, first_env)
    password = first_env["MAILFLEET_ADMIN_PASSWORD"]
    assert first_env["MAILFLEET_ADMIN_EMAIL"] == DEV_ADMIN_EMAIL
    assert password in told and len(password) >= 20
    assert (tmp_path / "admin-password").stat().st_mode & 0o077 == 0
    again: dict[str, str] = {}
    _console_admin(Settings(), tmp_path, again)
    assert again["MAILFLEET_ADMIN_PASSWORD"] == password


def test_a_configured_password_is_never_echoed(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    settings = Settings(
        MAILFLEET_ADMIN_EMAIL="me@example.com", MAILFLEET_ADMIN_PASSWORD="s3cret-pass-phrase"
    )
    told = _console_admin(settings, tmp_path, env)
    assert "s3cret" not in told and "me@example.com" in told
    assert "MAILFLEET_ADMIN_PASSWORD" not in env  # the children read it from the environment
