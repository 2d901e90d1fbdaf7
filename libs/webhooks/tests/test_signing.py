"""Signing and verification of webhook deliveries (pure)."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path

import pytest

from libs.webhooks.signing import SignatureError, generate_secret, parse_header, sign, verify

SECRET = "whsec_test"
BODY = b'{"id":"e1","type":"delivery.open"}'


def test_header_format_is_t_and_v1_over_timestamp_dot_body() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_round_trip_within_tolerance() -> None:
    header = sign(SECRET, BODY, timestamp=1000)
    assert verify(SECRET, BODY, header, now=1000 + 299) == 1000
    assert verify(SECRET, BODY, header, now=1000 - 299) == 1000


@pytest.mark.parametrize("now", [1000 + 301, 1000 - 301, 1000 + 86_400])
def test_replay_outside_tolerance_is_refused(now: float) -> None:
    header = sign(SECRET, BODY, timestamp=1000)
    with pytest.raises(SignatureError, match="replay"):
        verify(SECRET, BODY, header, now=now)


def test_custom_tolerance() -> None:
    header = sign(SECRET, BODY, timestamp=1000)
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, header, now=1011, tolerance_s=10)
    assert verify(SECRET, BODY, header, now=1010, tolerance_s=10) == 1000


def test_tampered_body_timestamp_or_secret_is_refused() -> None:
    header = sign(SECRET, BODY, timestamp=1000)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY + b" ", header, now=1000)
    with pytest.raises(SignatureError, match="does not match"):
        verify("whsec_other", BODY, header, now=1000)
    moved = header.replace("t=1000", "t=1001")
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, moved, now=1000)


def test_any_of_several_v1_signatures_may_match() -> None:
    good = sign(SECRET, BODY, timestamp=1000).split(",")[1]
    header = f"t=1000,v1={'0' * 64},{good},v0=ignored"
    assert verify(SECRET, BODY, header, now=1000) == 1000


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", "t=1000", "t=abc,v1=00", "t=1,t=2,v1=00", "garbage", "t=1000," + "x" * 3000],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(SignatureError):
        parse_header(header)
    with pytest.raises(SignatureError):
        verify(SECRET, BODY, header, now=1000)


def test_generated_secrets_are_long_and_distinct() -> None:
    secrets = {generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(s.startswith("whsec_") and len(s) >= 40 for s in secrets)


def test_the_readme_verification_snippet_accepts_ours_and_refuses_replays() -> None:
    """The snippet users copy from README.md agrees with the signer."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("### Outbound webhooks", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    namespace: dict[str, object] = {}
    exec(match.group(1), namespace)  # noqa: S102
    snippet = namespace["verify"]
    assert callable(snippet)
    now = int(time.time())
    snippet(SECRET, BODY, sign(SECRET, BODY, timestamp=now))
    with pytest.raises(ValueError, match="bad signature"):
        snippet(SECRET, BODY + b"x", sign(SECRET, BODY, timestamp=now))
    with pytest.raises(ValueError, match="replay"):
        snippet(SECRET, BODY, sign(SECRET, BODY, timestamp=now - 301))
