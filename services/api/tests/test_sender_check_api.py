"""GET /api/v1/senders/{domain}/check and the schedule warning, against a dnslib server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from libs.common.embedded import free_port
from libs.common.settings import DkimKeyConfig
from libs.mail.dkim_signing import load_key, new_key_file
from libs.mail.tests.dns_server import Zone, dns_server
from services.api.tests.support import Api


@contextmanager
def configured(api: Api, **update: Any) -> Iterator[None]:
    resources = api.app.state.resources
    before = resources.settings
    resources.settings = before.model_copy(update=update)
    try:
        yield
    finally:
        resources.settings = before


@contextmanager
def good_domain(tmp_path: Path) -> Iterator[tuple[Zone, int, DkimKeyConfig]]:
    path = new_key_file(tmp_path / "mf1.pem", "ed25519")
    config = DkimKeyConfig(domain="good.example", selector="mf1", key_file=str(path))
    with dns_server() as (zone, port):
        zone.a("relay.example.net", "192.0.2.10")
        zone.txt("good.example", "v=spf1 a:relay.example.net -all")
        zone.txt("mf1._domainkey.good.example", load_key(config).dns_record())
        zone.txt("_dmarc.good.example", "v=DMARC1; p=quarantine")
        zone.mx("good.example", "mx.good.example")
        zone.txt("bad.example", "v=spf1 include:elsewhere.example -all")
        yield zone, port, config


def dns_settings(port: int, config: DkimKeyConfig) -> dict[str, Any]:
    return {
        "dns_nameservers": "127.0.0.1", "dns_port": port, "dns_timeout_s": 3.0,
        "smtp_host": "relay.example.net", "dkim_keys": [config],
    }  # fmt: skip


async def test_check_reports_each_record(api: Api, tmp_path: Path) -> None:
    with good_domain(tmp_path) as (_, port, config), configured(api, **dns_settings(port, config)):
        good = await api.client.get(
            "/api/v1/senders/good.example/check?provider=smtp", headers=api.auth("viewer")
        )
        bad = await api.client.get(
            "/api/v1/senders/bad.example/check?provider=smtp", headers=api.auth("viewer")
        )
    assert good.status_code == 200, good.text
    assert good.json()["status"] == "pass" and good.json()["provider"] == "smtp"
    assert {c["name"] for c in good.json()["checks"]} >= {"spf", "dkim", "dmarc", "bounce_mx"}
    assert bad.status_code == 200 and bad.json()["status"] == "fail"
    failed = {c["name"]: c for c in bad.json()["checks"] if c["status"] == "fail"}
    assert set(failed) >= {"spf_provider", "dkim", "dmarc", "bounce_mx"}
    assert all(c["fix"] for c in failed.values())


async def test_check_refuses_bad_input_and_anonymous_callers(api: Api) -> None:
    for domain in ("not_a_domain", "a" * 300 + ".com", "x..example"):
        answer = await api.client.get(f"/api/v1/senders/{domain}/check", headers=api.auth("viewer"))
        assert answer.status_code == 422, (domain, answer.text)
    answer = await api.client.get(
        "/api/v1/senders/good.example/check?provider=pigeon", headers=api.auth("viewer")
    )
    assert answer.status_code == 422
    assert (await api.client.get("/api/v1/senders/good.example/check")).status_code == 401


async def _schedule(api: Api, from_email: str, provider: str) -> Any:
    listing = await api.client.post("/api/v1/lists", json={"name": "s"}, headers=api.auth("editor"))
    body = {
        "name": "n", "subject": "s", "html": "<p>x</p>", "from_email": from_email,
        "list_id": listing.json()["id"], "provider": provider,
    }  # fmt: skip
    created = await api.client.post("/api/v1/campaigns", json=body, headers=api.auth("editor"))
    assert created.status_code == 201, created.text
    answer = await api.client.post(
        f"/api/v1/campaigns/{created.json()['id']}/schedule", json={}, headers=api.auth("editor")
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "scheduled"  # a failing check never blocks
    return answer.json()


async def test_scheduling_from_a_failing_domain_warns_but_schedules(
    api: Api, tmp_path: Path
) -> None:
    with good_domain(tmp_path) as (_, port, config), configured(api, **dns_settings(port, config)):
        bad = await _schedule(api, "news@bad.example", "smtp")
        good = await _schedule(api, "news@good.example", "smtp")
        sink = await _schedule(api, "news@bad.example", "sink")
    assert any("dkim failed for bad.example" in w for w in bad["warnings"]), bad["warnings"]
    assert any("spf_provider" in w for w in bad["warnings"])
    assert good["warnings"] == [] and sink["warnings"] == []


async def test_scheduling_with_no_reachable_resolver_says_the_check_was_skipped(api: Api) -> None:
    silent = {"dns_nameservers": "127.0.0.1", "dns_port": free_port(), "dns_timeout_s": 0.5}
    with configured(api, **silent):
        answer = await _schedule(api, "news@bad.example", "smtp")
    assert len(answer["warnings"]) == 1
    assert answer["warnings"][0].startswith("sender check skipped: no DNS resolver answered")
