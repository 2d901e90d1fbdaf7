"""SSRF protection: which URLs and resolved addresses webhooks may reach (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from libs.webhooks.targets import TargetPolicy, TargetRefused

DEFAULT = TargetPolicy.parse("", require_https=True)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
        "ff02::1",
    ],
)
def test_special_addresses_are_refused_by_default(address: str) -> None:
    with pytest.raises(TargetRefused, match="MAILFLEET_WEBHOOK_ALLOWED_TARGETS"):
        DEFAULT.check_address("hooks.example.com", ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    DEFAULT.check_address("hooks.example.com", ipaddress.ip_address(address))


def test_every_resolved_address_must_be_allowed() -> None:
    addresses = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.5")]
    with pytest.raises(TargetRefused, match="10.0.0.5"):
        DEFAULT.check_addresses("mixed.example.com", addresses)
    with pytest.raises(TargetRefused, match="no address"):
        DEFAULT.check_addresses("empty.example.com", [])


def test_allow_list_of_cidrs_and_hosts() -> None:
    policy = TargetPolicy.parse("127.0.0.1/32, 10.20.0.0/16, hooks.internal", require_https=True)
    policy.check_address("localhost", ipaddress.ip_address("127.0.0.1"))
    policy.check_address("x", ipaddress.ip_address("::ffff:127.0.0.1"))
    policy.check_address("x", ipaddress.ip_address("10.20.3.4"))
    policy.check_address("HOOKS.internal.", ipaddress.ip_address("192.168.9.9"))
    with pytest.raises(TargetRefused):
        policy.check_address("localhost", ipaddress.ip_address("127.0.0.2"))
    with pytest.raises(TargetRefused):
        policy.check_address("x", ipaddress.ip_address("10.21.0.1"))


def test_bad_allow_list_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="neither a CIDR"):
        TargetPolicy.parse("10.0.0.0/8, not a host!", require_https=True)


def test_urls_checked_on_save() -> None:
    assert DEFAULT.check_url("https://hooks.example.com/in?x=1") == (
        "https",
        "hooks.example.com",
        443,
    )
    assert DEFAULT.check_url("https://hooks.example.com:8443/") == (
        "https",
        "hooks.example.com",
        8443,
    )
    for url, reason in [
        ("http://hooks.example.com/", "https://"),
        ("ftp://hooks.example.com/", "https://"),
        ("https:///nohost", "no host"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https://hooks.example.com/#frag", "fragment"),
        ("https://127.0.0.1/", "private or special"),
        ("https://[::1]:8443/", "private or special"),
        ("https://169.254.169.254/latest/meta-data", "private or special"),
        ("https://bad_host!.com/", "not a valid host"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
        ("https://x.com/" + "a" * 2001, "longer than"),
    ]:
        with pytest.raises(TargetRefused, match=reason):
            DEFAULT.check_url(url)


def test_http_only_when_allowed() -> None:
    lenient = TargetPolicy.parse("127.0.0.1/32", require_https=False)
    assert lenient.check_url("http://127.0.0.1:8080/hook") == ("http", "127.0.0.1", 8080)
    # A host name is judged when resolved at delivery, not on save.
    assert lenient.check_url("http://localhost:8080/")[1] == "localhost"
