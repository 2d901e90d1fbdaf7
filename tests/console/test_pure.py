"""The console's pure parts: rates, session expiry, CSRF tokens, passwords, redirects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.api.console import passwords, sessions
from services.api.console.live import RateMeter
from services.api.console.routes_auth import _safe_next


def test_rate_is_the_change_of_sent_over_the_window() -> None:
    meter = RateMeter(window=2)
    assert meter.add(0.0, 0) is None
    assert meter.add(1.0, 100) == 100.0
    assert meter.add(2.0, 300) == 150.0
    assert meter.add(3.0, 300) == 100.0  # the oldest sample (t=0) left the window


def test_sessions_end_on_idle_or_absolute_limit() -> None:
    limits = sessions.Timeouts(idle=timedelta(minutes=10), absolute=timedelta(hours=1))
    start = datetime(2026, 11, 30, tzinfo=UTC)
    assert not sessions.expired(
        start, start + timedelta(minutes=50), start + timedelta(minutes=55), limits
    )
    assert sessions.expired(start, start, start + timedelta(minutes=11), limits)
    assert sessions.expired(
        start, start + timedelta(minutes=59), start + timedelta(minutes=61), limits
    )


def test_csrf_tokens_are_bound_to_their_session() -> None:
    secret = b"k" * 32
    token = sessions.csrf_token(secret, "session-a")
    assert sessions.csrf_ok(secret, "session-a", token)
    assert not sessions.csrf_ok(secret, "session-b", token)
    assert not sessions.csrf_ok(b"other" * 8, "session-a", token)
    assert not sessions.csrf_ok(secret, "session-a", None)
    assert not sessions.csrf_ok(secret, None, token)


def test_passwords_are_argon2id_and_unknown_users_never_match() -> None:
    hashed = passwords.hash_password("a long enough password")
    assert hashed.startswith("$argon2id$")
    assert passwords.verify_password(hashed, "a long enough password")
    assert not passwords.verify_password(hashed, "wrong")
    assert not passwords.verify_password(None, "a long enough password")
    with pytest.raises(passwords.WeakPassword):
        passwords.check_strength("short")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/console/lists", "/console/lists"),
        ("https://evil.example/console", "/console"),
        ("//evil.example", "/console"),
        ("/console//evil.example", "/console"),
        ("/console\\\\evil", "/console"),
        (None, "/console"),
    ],
)
def test_sign_in_redirects_only_within_the_console(target: str | None, expected: str) -> None:
    assert _safe_next(target) == expected
