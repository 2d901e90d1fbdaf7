"""Failed authentications are limited per client and key prefix, and never lock out a
valid key; the client address is taken from X-Forwarded-For only behind trusted proxies."""

from __future__ import annotations

import ipaddress

from libs.common.settings import Settings, parse_networks
from services.api.app import create_app
from services.api.ratelimit import FailureLimiter, client_address
from services.api.tests.support import running

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.7")


def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"


def test_forwarded_for_is_read_from_a_trusted_proxy() -> None:
    assert client_address("10.1.2.3", "198.51.100.1", PROXIES) == "198.51.100.1"


def test_a_spoofed_hop_left_of_the_real_client_is_not_believed() -> None:
    # The client wrote "1.1.1.1" itself; our ingress appended the address it saw.
    chain = "1.1.1.1, 198.51.100.1, 192.168.1.7"
    assert client_address("10.0.0.5", chain, PROXIES) == "198.51.100.1"


def test_no_proxies_configured_means_no_forwarded_header_is_believed() -> None:
    assert client_address("10.1.2.3", "198.51.100.1", ()) == "10.1.2.3"


def test_trusted_proxies_setting_refuses_garbage() -> None:
    try:
        Settings(MAILFLEET_TRUSTED_PROXIES="10.0.0.0/8, not-an-ip")  # type: ignore[call-arg]
    except ValueError as exc:
        assert "not-an-ip" in str(exc)
    else:
        raise AssertionError("a bad CIDR was accepted")
    assert parse_networks(" 10.0.0.0/8 ,::1 ") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1"),
    )


def test_limiter_counts_each_bucket_apart() -> None:
    now = [0.0]
    limiter = FailureLimiter(2, 60.0, clock=lambda: now[0])
    for _ in range(2):
        limiter.record_failure("client:a")
    assert limiter.retry_after("client:a") == 60.0
    assert limiter.retry_after("client:b") is None
    now[0] = 61.0
    assert limiter.retry_after("client:a") is None


async def test_31_bad_keys_from_one_ip_do_not_lock_out_a_valid_key(settings: Settings) -> None:
    """Behind an ingress every request comes from one address: the one that matters."""
    admin_key = "mf_" + "a" * 43
    app = create_app(settings.model_copy(update={"bootstrap_api_key": admin_key}))
    async with running(app) as client:
        bad = {"Authorization": "Bearer mf_wrongwrongwrong"}
        codes = [(await client.get("/api/v1/lists", headers=bad)).status_code for _ in range(31)]
        assert codes[:30] == [401] * 30
        assert codes[30] == 429  # the guesser is slowed down ...
        valid = await client.get("/api/v1/lists", headers={"Authorization": f"Bearer {admin_key}"})
        assert valid.status_code == 200  # ... and the valid key still gets in


async def test_failures_behind_a_trusted_proxy_count_per_real_client(settings: Settings) -> None:
    app = create_app(
        settings.model_copy(update={"trusted_proxies": "127.0.0.0/8"}),
        auth_failures_per_minute=3,
    )
    # ASGITransport's peer is 127.0.0.1: the "ingress".
    async with running(app, client=("127.0.0.1", 40000)) as client:
        for n in range(3):
            guess = {
                "Authorization": f"Bearer mf_guess{n}xxxxxx",
                "X-Forwarded-For": "198.51.100.1",
            }
            assert (await client.get("/api/v1/lists", headers=guess)).status_code == 401
        limited = {"Authorization": "Bearer mf_guess9xxxxxx", "X-Forwarded-For": "198.51.100.1"}
        assert (await client.get("/api/v1/lists", headers=limited)).status_code == 429
        other = {"Authorization": "Bearer mf_other1xxxxxx", "X-Forwarded-For": "198.51.100.2"}
        assert (await client.get("/api/v1/lists", headers=other)).status_code == 401


async def test_failures_with_one_key_prefix_are_limited_across_clients(
    settings: Settings,
) -> None:
    """Someone who read a key's listed prefix cannot try the rest from many addresses."""
    app = create_app(
        settings.model_copy(update={"trusted_proxies": "127.0.0.0/8"}),
        auth_failures_per_minute=3,
    )
    async with running(app, client=("127.0.0.1", 40000)) as client:
        answers = []
        for n in range(4):
            guess = {"Authorization": f"Bearer mf_known7_{n}", "X-Forwarded-For": f"198.51.100.{n}"}
            answers.append((await client.get("/api/v1/lists", headers=guess)).status_code)
        assert answers == [401, 401, 401, 429]
