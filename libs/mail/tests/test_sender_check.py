"""The sender check against a real DNS server (dnslib) serving good and broken records."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.embedded import free_port
from libs.common.settings import DkimKeyConfig, Settings
from libs.mail.dkim_signing import DkimKey, load_key, new_key_file
from libs.mail.sender_check import Dns, SenderReport, SenderSetup, check_sender
from libs.mail.tests.dns_server import Zone, dns_server

DOMAIN = "example.com"


def make_key(folder: Path, name: str = "k") -> DkimKey:
    path = new_key_file(folder / f"{name}.pem", "ed25519")
    return load_key(DkimKeyConfig(domain=DOMAIN, selector="mf1", key_file=str(path)))


@pytest.fixture
def served() -> Iterator[tuple[Zone, int]]:
    with dns_server() as zone_port:
        yield zone_port


def good_zone(zone: Zone, key: DkimKey) -> None:
    zone.a("relay.example.net", "192.0.2.10")
    zone.txt(
        DOMAIN,
        "google-site-verification=abc",
        "v=spf1 ip4:192.0.2.10 include:_spf.example.com -all",
    )
    zone.txt("_spf.example.com", "v=spf1 ip4:198.51.100.0/24 mx ~all")
    zone.txt("sendgrid.net", "v=spf1 ip4:167.89.0.0/17 ~all")
    zone.txt(f"mf1._domainkey.{DOMAIN}", key.dns_record())
    zone.txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=reject; rua=mailto:d@example.com")
    zone.mx(DOMAIN, "mx1.example.com")


async def check(port: int, key: DkimKey, **setup: str) -> SenderReport:
    config = SenderSetup(
        provider=setup.get("provider", "smtp"), smtp_host="relay.example.net", dkim_keys=[key],
        bounce_domain=setup.get("bounce_domain", ""),
    )  # fmt: skip
    return await check_sender(DOMAIN, config, Dns(["127.0.0.1"], port, 3.0))


def statuses(report: SenderReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


async def test_a_well_configured_domain_passes_every_check(
    served: tuple[Zone, int], tmp_path: Path
) -> None:
    (zone, port), key = served, make_key(tmp_path)
    good_zone(zone, key)
    report = await check(port, key)
    assert report.status == "pass", report.checks
    assert set(statuses(report)) == {
        "spf",
        "spf_provider",
        "spf_lookups",
        "dkim",
        "dmarc",
        "dmarc_alignment",
        "bounce_mx",
    }
    lookups = next(c for c in report.checks if c.name == "spf_lookups")
    assert lookups.detail == "2 DNS lookups"  # include:_spf.example.com and its mx


async def test_sendgrid_must_be_included(served: tuple[Zone, int], tmp_path: Path) -> None:
    (zone, port), key = served, make_key(tmp_path)
    good_zone(zone, key)
    failing = await check(port, key, provider="sendgrid")
    provider = next(c for c in failing.checks if c.name == "spf_provider")
    assert provider.status == "fail" and "include:sendgrid.net" in (provider.fix or "")
    zone.txt(DOMAIN, "v=spf1 include:sendgrid.net -all")
    assert statuses(await check(port, key, provider="sendgrid"))["spf_provider"] == "pass"


async def test_broken_records_fail_with_what_to_fix(
    served: tuple[Zone, int], tmp_path: Path
) -> None:
    (zone, port), key = served, make_key(tmp_path)
    good_zone(zone, key)
    zone.drop(DOMAIN, "TXT")
    zone.drop(f"mf1._domainkey.{DOMAIN}", "TXT")
    zone.drop(f"_dmarc.{DOMAIN}", "TXT")
    zone.drop(DOMAIN, "MX")
    report = await check(port, key)
    assert report.status == "fail"
    got = statuses(report)
    assert (got["spf"], got["dkim"], got["dmarc"], got["bounce_mx"]) == ("fail",) * 4
    fixes = {c.name: c.fix or "" for c in report.checks}
    assert "v=spf1 a:relay.example.net -all" in fixes["spf"]
    assert key.public_b64 in fixes["dkim"] and "_dmarc.example.com" in fixes["dmarc"]


async def test_spf_without_the_relay_two_records_or_plus_all(
    served: tuple[Zone, int], tmp_path: Path
) -> None:
    (zone, port), key = served, make_key(tmp_path)
    good_zone(zone, key)
    zone.txt(DOMAIN, "v=spf1 ip4:203.0.113.1 ?all")
    got = statuses(await check(port, key))
    assert (got["spf"], got["spf_provider"]) == ("warn", "fail")
    zone.txt(DOMAIN, "v=spf1 a:relay.example.net +all")
    assert statuses(await check(port, key))["spf"] == "fail"
    zone.txt(DOMAIN, "v=spf1 -all", "v=spf1 ip4:192.0.2.10 -all")
    two = next(c for c in (await check(port, key)).checks if c.name == "spf")
    assert two.status == "fail" and "2 SPF records" in two.detail


async def test_spf_lookups_are_counted_through_nested_includes(
    served: tuple[Zone, int], tmp_path: Path
) -> None:
    (zone, port), key = served, make_key(tmp_path)
    good_zone(zone, key)
    # 1 include at the top, each of 3 nested records has 2 includes + a: 1 + 3*3 + 2*3 leaves.
    zone.txt(DOMAIN, "v=spf1 ip4:192.0.2.10 include:l1.example.com -all")
    zone.txt("l1.example.com", "v=spf1 include:l2a.example.com include:l2b.example.com a ~all")
    for leaf in ("l2a", "l2b"):
        zone.txt(f"{leaf}.example.com", "v=spf1 mx a include:l3.example.com ~all")
    zone.txt("l3.example.com", "v=spf1 ip4:198.51.100.1 ~all")
    report = await check(port, key)
    lookups = next(c for c in report.checks if c.name == "spf_lookups")
    # l1 (1) + l2a, l2b, a (3) + per leaf mx, a, l3 (3 each) = 10: at the limit.
    assert (lookups.status, lookups.detail) == ("warn", "10 DNS lookups: at the limit")
    zone.txt("l3.example.com", "v=spf1 exists:x.example.com ~all")
    lookups = next(c for c in (await check(port, key)).checks if c.name == "spf_lookups")
    assert lookups.status == "fail" and lookups.detail.startswith("12 DNS lookups")


async def test_dkim_with_another_key_published_fails(
    served: tuple[Zone, int], tmp_path: Path
) -> None:
    (zone, port), key = served, make_key(tmp_path)
    good_zone(zone, key)
    zone.txt(f"mf1._domainkey.{DOMAIN}", make_key(tmp_path, "other").dns_record())
    dkim = next(c for c in (await check(port, key)).checks if c.name == "dkim")
    assert dkim.status == "fail" and "another key" in dkim.detail


async def test_dmarc_policy_none_warns_and_a_foreign_bounce_domain_without_dkim_is_unaligned(
    served: tuple[Zone, int], tmp_path: Path
) -> None:
    (zone, port), key = served, make_key(tmp_path)
    good_zone(zone, key)
    zone.txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=none")
    zone.mx("bounces.mailer.net", "mx.mailer.net")
    report = await check(port, key, bounce_domain="bounces.mailer.net")
    got = statuses(report)
    assert (got["dmarc"], got["dmarc_alignment"], got["bounce_mx"]) == ("warn", "pass", "pass")
    unsigned = SenderSetup("smtp", "relay.example.net", [], "bounces.mailer.net")
    report = await check_sender(DOMAIN, unsigned, Dns(["127.0.0.1"], port, 3.0))
    assert statuses(report)["dmarc_alignment"] == "fail"


def test_nameservers_must_be_ip_addresses() -> None:
    assert Settings(MAILFLEET_DNS_NAMESERVERS="127.0.0.1, ::1").dns_nameservers
    with pytest.raises(ValueError, match="not an IP address"):
        Settings(MAILFLEET_DNS_NAMESERVERS="dns.example.com")


async def test_an_unreachable_resolver_skips_the_check_quickly(tmp_path: Path) -> None:
    key = make_key(tmp_path)
    setup = SenderSetup("smtp", "relay.example.net", [key])
    started = time.monotonic()
    report = await check_sender(DOMAIN, setup, Dns(["127.0.0.1"], free_port(), 0.5))
    assert report.status == "skipped" and report.checks == []
    assert "no DNS resolver answered" in (report.skipped or "")
    assert time.monotonic() - started < 3


async def test_a_domain_too_long_for_its_dmarc_name_is_a_verdict_not_an_error(
    served: tuple[Zone, int], tmp_path: Path
) -> None:
    _, port = served
    longest = ".".join(["a" * 62] * 4)  # 251 characters: _dmarc.<it> exceeds 255 octets
    setup = SenderSetup("smtp", "relay.example.net", [make_key(tmp_path)])
    report = await check_sender(longest, setup, Dns(["127.0.0.1"], port, 3.0))
    assert report.status == "fail" and statuses(report)["dmarc"] == "fail"
