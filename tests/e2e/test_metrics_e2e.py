"""Scrape every service during an end-to-end run: each metric a Grafana dashboard or an alert
rule names is exported by some service, the counters agree with what happened, and every
service answers /healthz and /readyz."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.common.embedded import free_port
from libs.common.settings import Settings
from tests.deploy.metric_refs import PENDING, exported_names, referenced_metrics
from tests.e2e.harness import RunningStack, start_stack

RECIPIENTS = 300
BACKGROUND = [
    "importer", "scheduler", "tracker", "dispatcher-1", "dispatcher-2", "guard", "webhooks",
    "automations",
]  # fmt: skip


@pytest.fixture(scope="module")
async def stack(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningStack, dict[str, int]]]:
    ports = {name: free_port() for name in BACKGROUND}
    running = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("metrics-e2e-logs"),
        dispatchers=2,
        metrics_ports=ports,
        # The reputation, webhook and automation alerts read the metrics of these three.
        extra_children=["guard", "webhooks", "automations"],
    )
    yield running, ports
    await running.stop()


def urls(running: RunningStack, ports: dict[str, int]) -> dict[str, str]:
    found = {"api": running.api_url, "edge": running.edge_url}
    found.update({name: f"http://127.0.0.1:{port}" for name, port in ports.items()})
    return found


async def get_when_up(http: httpx.AsyncClient, url: str, timeout: float = 60) -> httpx.Response:
    """The ops server starts after migrations and topics: poll until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await http.get(url)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def lag_partitions(exposition: str) -> set[str]:
    return {
        s.labels["partition"]
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == "mailfleet_consumer_lag" and s.labels["topic"] == "batch.ready"
    }


async def lag_partitions_when_all_reported(bases: dict[str, str]) -> list[set[str]]:
    """The batch.ready partitions each dispatcher reports lag for, once together they
    cover every partition (or after 20 s, as they are then)."""
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            owned = [
                lag_partitions((await http.get(f"{bases[name]}/metrics")).text)
                for name in ("dispatcher-1", "dispatcher-2")
            ]
            if len(owned[0] | owned[1]) >= running_settings_partitions() or (
                time.monotonic() > deadline
            ):
                return owned
            await asyncio.sleep(0.2)


def running_settings_partitions() -> int:
    return Settings().batch_ready_partitions  # the stack runs with the default


def total(exposition: str, sample: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_every_dashboard_and_rule_metric_is_exported_during_a_campaign(
    stack: tuple[RunningStack, dict[str, int]],
) -> None:
    running, ports = stack
    lines = ["email,first_name"] + [
        f"m{i}@metrics{i % 7}.example.com,P{i}" for i in range(RECIPIENTS)
    ]
    lines.append("not-an-address,X")
    api = running.client()
    try:
        list_id = await api.create_list("metrics-e2e")
        job = await api.wait_import(await api.import_csv(list_id, "\n".join(lines).encode()))
        assert job["status"] == "completed", job
        campaign_id = await api.create_campaign(
            name="metrics-e2e",
            subject="Hi {{ first_name }}",
            html="<p>Hi {{ first_name }}</p>",
            from_email="news@example.com",
            list_id=list_id,
        )
        await api.schedule(campaign_id)
        done = await api.wait_campaign(campaign_id, timeout=120)
        assert done["status"] == "completed", done
    finally:
        await api.close()

    pages: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for name, base in urls(running, ports).items():
            health = await get_when_up(http, f"{base}/healthz")
            assert health.status_code == 200, name
            ready = await http.get(f"{base}/readyz")
            assert ready.status_code == 200, (name, ready.text)
            # The edge has no database: the broker is all it needs.
            checks = {"broker": True} if name == "edge" else {"database": True, "broker": True}
            assert ready.json()["checks"] == checks, name
            page = await http.get(f"{base}/metrics")
            assert page.status_code == 200, name
            pages[name] = page.text

    exported = set().union(*(exported_names(text) for text in pages.values()))
    missing = {
        metric: places
        for metric, places in referenced_metrics().items()
        if metric not in exported and metric not in PENDING
    }
    assert missing == {}, "dashboards/rules name metrics no running service exports"

    # The numbers tell what happened (other tests share the database, not these processes).
    dispatchers = [pages["dispatcher-1"], pages["dispatcher-2"]]
    sent = sum(
        total(p, "mailfleet_dispatcher_emails_total", provider="sink", outcome="sent")
        for p in dispatchers
    )
    assert sent == RECIPIENTS
    assert total(pages["importer"], "mailfleet_import_rows_total", outcome="imported") == RECIPIENTS
    assert total(pages["importer"], "mailfleet_import_rows_total", outcome="rejected") == 1
    assert total(pages["tracker"], "mailfleet_tracker_recipients_folded_total") == RECIPIENTS
    assert total(pages["scheduler"], "mailfleet_campaigns", status="completed") >= 1
    assert total(pages["api"], "mailfleet_api_requests_total", route="/api/v1/lists") >= 1
    # Lag is reported per partition by the instance that owns it: the two dispatchers
    # together cover every batch.ready partition, and none twice. A partition shows once
    # its owner has fetched from it (its high watermark): an instance that got no batch
    # may report a moment after the campaign ends, so the pages are read until it has.
    owned = await lag_partitions_when_all_reported(urls(running, ports))
    assert owned[0].isdisjoint(owned[1]), owned
    assert len(owned[0] | owned[1]) == running_settings_partitions(), owned
    # Nothing left in flight once the campaign is done and the last events are read (the
    # campaign's `completed` is itself an event that the guard and webhooks still consume).
    still = await in_flight_after_settling(urls(running, ports))
    assert still == {}, f"events still in flight: {still}\n" + log_tails(running, still)
    # Every labelled counter has its series (at 0) after a clean campaign, so that alerts
    # built on rate() or increase() see the first increase.
    assert not_yet_counted(pages) == {}


async def test_bulk_services_yield_the_cpu_to_the_api_and_the_edge(
    stack: tuple[RunningStack, dict[str, int]],
) -> None:
    """Under contention on one host, the API and the edge (people and mail clients wait on
    them) run before the event-driven services (MAILFLEET_BULK_NICE)."""
    running, _ = stack
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    nice = {
        name: os.getpriority(os.PRIO_PROCESS, pid)
        for name, pid in running.supervisor.pids().items()
    }
    assert (nice["api"], nice["edge"]) == (ours, ours), nice
    bulk = min(19, ours + Settings().bulk_nice)
    for name in ("dispatcher-1", "dispatcher-2", "importer", "scheduler", "tracker"):
        assert nice[name] == bulk, nice


# The labelled counters whose known label values must have a series from the start, and
# where: (service page, labels every such series must include).
SERIES_FROM_THE_START: dict[str, tuple[str, dict[str, str]]] = {
    "mailfleet_dispatcher_failovers_total": ("dispatcher-1", {"provider": "sendgrid"}),
    "mailfleet_dlq_events_total": ("tracker", {"topic": "delivery.event"}),
    "mailfleet_handler_errors_total": ("dispatcher-1", {"topic": "batch.ready"}),
    "mailfleet_provider_retries_total": ("dispatcher-1", {"provider": "sink", "reason": "timeout"}),
    "mailfleet_provider_throttled_total": ("dispatcher-1", {"provider": "sink"}),
    "mailfleet_tracker_delivery_events_total": ("tracker", {"event": "bounce"}),
    "mailfleet_tracker_rejected_events_total": ("tracker", {"topic": "delivery.result"}),
}


async def in_flight_after_settling(
    bases: dict[str, str], timeout: float = 30
) -> dict[tuple[str, str], float]:
    """{(service, topic): events} still in flight after `timeout` ({} as soon as none is)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            still = {
                (name, s.labels["topic"]): s.value
                for name, base in bases.items()
                for family in text_string_to_metric_families(
                    (await http.get(f"{base}/metrics")).text
                )
                for s in family.samples
                if s.name == "mailfleet_events_in_flight" and s.value
            }
            if not still or time.monotonic() > deadline:
                return still
            await asyncio.sleep(0.2)  # metrics of other processes: nothing to wait on here


def log_tails(running: RunningStack, still: dict[tuple[str, str], float]) -> str:
    """The last lines each service with events in flight logged: what it is waiting on."""
    tails = []
    for service in sorted({name for name, _ in still}):
        log = running.supervisor.log_dir / f"{service}.log"
        lines = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        tails.append(f"--- {service}.log\n" + "\n".join(lines))
    return "\n".join(tails)


def not_yet_counted(pages: dict[str, str]) -> dict[str, str]:
    """The metrics of SERIES_FROM_THE_START with no matching series on their page."""
    missing = {}
    for metric, (page, labels) in SERIES_FROM_THE_START.items():
        samples = [
            s
            for family in text_string_to_metric_families(pages[page])
            for s in family.samples
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        if not samples:
            missing[metric] = f"no series with {labels} on {page}"
    return missing
