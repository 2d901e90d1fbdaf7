"""Writes the Grafana dashboards under deploy/grafana/dashboards/ (the JSON is committed).

Edit the panels here and run `.venv/bin/python deploy/grafana/build_dashboards.py`;
tests/deploy/test_grafana.py fails when the JSON and this file disagree, when a dashboard
does not load as a Grafana model, or when a query names a metric no service exports.

Every query goes through the `datasource` variable, so the dashboards work with the
provisioned Prometheus (docker-compose) and with any other Prometheus picked in Grafana.
Campaign gauges are reported by every background service from PostgreSQL: take `max`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SERVICES = "api|edge|importer|scheduler|dispatcher|tracker"
RATE = "$__rate_interval"


@dataclass
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    kind: str = "timeseries"  # timeseries | stat
    unit: str = "short"
    description: str = ""
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)  # fieldConfig.defaults.custom


@dataclass
class Row:
    title: str
    panels: list[Panel]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": expr,
            "legendFormat": legend,
            "refId": chr(ord("A") + index),
            "range": True,
        }
        for index, (expr, legend) in enumerate(panel.queries)
    ]
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "custom": panel.custom},
            "overrides": [],
        },
    }
    if panel.kind == "stat":
        body["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            **panel.options,
        }
    else:
        body["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
            **panel.options,
        }
    return body


def dashboard(uid: str, title: str, description: str, rows: list[Row]) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    panel_id = 1
    y = 0
    for row in rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + row_height
                row_height = 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mailfleet"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                }
            ]
        },
        "annotations": {"list": []},
        "links": [
            {
                "title": "mailfleet",
                "type": "dashboards",
                "tags": ["mailfleet"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": panels,
    }


def _stat(title: str, expr: str, unit: str = "short", description: str = "") -> Panel:
    return Panel(
        title, [(expr, "")], kind="stat", unit=unit, width=4, height=4, description=description
    )


def overview() -> dict[str, Any]:
    sent = f'sum(rate(mailfleet_dispatcher_emails_total{{outcome="sent"}}[{RATE}]))'
    return dashboard(
        "mailfleet-overview",
        "mailfleet / Overview",
        "Campaigns, sending rate, delivery and failures at a glance.",
        [
            Row(
                "Now",
                [
                    _stat(
                        "Campaigns in progress", 'max(mailfleet_campaigns{status="in_progress"})'
                    ),
                    _stat("Campaigns scheduled", 'max(mailfleet_campaigns{status="scheduled"})'),
                    _stat("Campaigns paused", 'max(mailfleet_campaigns{status="paused"})'),
                    _stat("Emails/s", sent, "ops"),
                    _stat(
                        "Accepted by providers",
                        'sum(increase(mailfleet_dispatcher_emails_total{outcome="sent"}[1h]))'
                        " / sum(increase(mailfleet_dispatcher_emails_total"
                        '{outcome=~"sent|failed|unknown"}[1h]))',
                        "percentunit",
                        "Share of the last hour's send attempts a provider accepted.",
                    ),
                    _stat(
                        "Delivered",
                        'sum(increase(mailfleet_tracker_delivery_events_total{event="delivered"}[24h]))'
                        ' / sum(increase(mailfleet_dispatcher_emails_total{outcome="sent"}[24h]))',
                        "percentunit",
                        "Delivered events reported by providers over the last 24 h, per email"
                        " sent (providers report deliveries minutes after the send).",
                    ),
                ],
            ),
            Row(
                "Sending",
                [
                    Panel(
                        "Emails/s by provider",
                        [
                            (
                                "sum by (provider) (rate(mailfleet_dispatcher_emails_total"
                                f'{{outcome="sent"}}[{RATE}]))',
                                "{{provider}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Failures/s by provider and outcome",
                        [
                            (
                                "sum by (provider, outcome) (rate(mailfleet_dispatcher_emails_total"
                                f'{{outcome=~"failed|unknown|invalid"}}[{RATE}]))',
                                "{{provider}} {{outcome}}",
                            )
                        ],
                        unit="ops",
                        description="failed: the provider refused; unknown: a crash left the"
                        " outcome unknown (not re-sent); invalid: bad address or content.",
                    ),
                    Panel(
                        "Provider events/s",
                        [
                            (
                                "sum by (event) (rate(mailfleet_tracker_delivery_events_total"
                                f"[{RATE}]))",
                                "{{event}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Recipient outcomes/s (tracker)",
                        [
                            (
                                "sum by (status) (rate(mailfleet_tracker_recipients_folded_total"
                                f"[{RATE}]))",
                                "{{status}}",
                            )
                        ],
                        unit="ops",
                    ),
                ],
            ),
            Row(
                "Campaigns",
                [
                    Panel(
                        "Campaigns by status",
                        [("max by (status) (mailfleet_campaigns)", "{{status}}")],
                    ),
                    Panel(
                        "Campaigns finished",
                        [
                            (
                                "sum by (outcome) (increase(mailfleet_tracker_campaigns_finished_total"
                                f"[{RATE}]))",
                                "{{outcome}}",
                            )
                        ],
                        custom={"drawStyle": "bars"},
                    ),
                ],
            ),
            Row(
                "Services",
                [
                    Panel(
                        "Instances up",
                        [(f'sum by (service) (up{{service=~"{SERVICES}"}})', "{{service}}")],
                    ),
                    Panel(
                        "HTTP requests/s by service (api, edge) and status",
                        [
                            (
                                "sum by (service, status) "
                                f"(rate(mailfleet_api_requests_total[{RATE}]))",
                                "{{service}} {{status}}",
                            )
                        ],
                        unit="reqps",
                    ),
                ],
            ),
        ],
    )


def pipeline() -> dict[str, Any]:
    return dashboard(
        "mailfleet-pipeline",
        "mailfleet / Pipeline",
        "Kafka lag per topic, throughput of each stage, in-flight batches and dead letters.",
        [
            Row(
                "Lag",
                [
                    Panel(
                        "Consumer lag by topic",
                        [
                            (
                                "sum by (service, topic) (mailfleet_consumer_lag)",
                                "{{service}} {{topic}}",
                            )
                        ],
                    ),
                    Panel(
                        "Consumer lag by partition",
                        [
                            (
                                "sum by (topic, partition) (mailfleet_consumer_lag)",
                                "{{topic}}/{{partition}}",
                            )
                        ],
                    ),
                ],
            ),
            Row(
                "Throughput",
                [
                    Panel(
                        "Events consumed/s by topic",
                        [
                            (
                                "sum by (service, topic) (rate(mailfleet_events_consumed_total"
                                f"[{RATE}]))",
                                "{{service}} {{topic}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Events produced/s by topic",
                        [
                            (
                                f"sum by (topic) (rate(mailfleet_events_produced_total[{RATE}]))",
                                "{{topic}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Scheduler",
                        [
                            (
                                f"sum(rate(mailfleet_scheduler_batches_emitted_total[{RATE}]))",
                                "batches emitted/s",
                            ),
                            (
                                "sum(increase(mailfleet_scheduler_campaigns_started_total"
                                f"[{RATE}]))",
                                "campaigns started",
                            ),
                        ],
                    ),
                    Panel(
                        "Dispatcher batches/s by mode",
                        [
                            (
                                f"sum by (mode) (rate(mailfleet_dispatcher_batches_total[{RATE}]))",
                                "{{mode}}",
                            )
                        ],
                        unit="ops",
                        description="sent; replayed from the send ledger (redelivery); unknown"
                        " outcome; handed back on shutdown; cancelled.",
                    ),
                    Panel(
                        "Events in flight",
                        [
                            (
                                "sum by (service, topic) (mailfleet_events_in_flight)",
                                "{{service}} {{topic}}",
                            )
                        ],
                        description="Events handed to a handler and not finished; on"
                        " batch.ready these are the batches being sent.",
                    ),
                    Panel(
                        "Tracker folding",
                        [
                            (
                                f"sum(rate(mailfleet_tracker_batches_folded_total[{RATE}]))",
                                "batches folded/s",
                            ),
                            (
                                f"sum(rate(mailfleet_tracker_duplicate_batches_total[{RATE}]))",
                                "duplicate batches/s",
                            ),
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Dispatcher end to tracker fold (p50, p95)",
                        [
                            (
                                "histogram_quantile(0.5, sum by (le) (rate("
                                f"mailfleet_tracker_result_lag_seconds_bucket[{RATE}])))",
                                "p50",
                            ),
                            (
                                "histogram_quantile(0.95, sum by (le) (rate("
                                f"mailfleet_tracker_result_lag_seconds_bucket[{RATE}])))",
                                "p95",
                            ),
                        ],
                        unit="s",
                    ),
                    Panel(
                        "Longest stall of a campaign in progress",
                        [("max(mailfleet_campaign_longest_stall_seconds)", "stall")],
                        unit="s",
                        description="Alert MailfleetCampaignStuck fires above 15 minutes.",
                    ),
                ],
            ),
            Row(
                "Errors",
                [
                    Panel(
                        "Dead-lettered events",
                        [
                            (
                                f"sum by (topic) (increase(mailfleet_dlq_events_total[{RATE}]))",
                                "malformed {{topic}}",
                            ),
                            (
                                "sum by (topic) (increase(mailfleet_tracker_rejected_events_total"
                                f"[{RATE}]))",
                                "refused by db {{topic}}",
                            ),
                        ],
                        custom={"drawStyle": "bars"},
                    ),
                    Panel(
                        "Handler errors (retried)",
                        [
                            (
                                "sum by (service, topic) (increase(mailfleet_handler_errors_total"
                                f"[{RATE}]))",
                                "{{service}} {{topic}}",
                            )
                        ],
                    ),
                ],
            ),
        ],
    )


def provider() -> dict[str, Any]:
    latency = "mailfleet_provider_request_seconds_bucket"
    return dashboard(
        "mailfleet-provider",
        "mailfleet / Providers",
        "Provider latency, throttling (429), retries, rate limits and circuit breakers.",
        [
            Row(
                "Requests",
                [
                    Panel(
                        "Request latency (p50, p95, p99)",
                        [
                            (
                                f"histogram_quantile({q}, sum by (provider, le) (rate({latency}[{RATE}])))",
                                f"{{{{provider}}}} p{int(q * 100)}",
                            )
                            for q in (0.5, 0.95, 0.99)
                        ],
                        unit="s",
                    ),
                    Panel(
                        "Requests/s",
                        [
                            (
                                "sum by (provider) (rate(mailfleet_provider_request_seconds_count"
                                f"[{RATE}]))",
                                "{{provider}}",
                            )
                        ],
                        unit="reqps",
                    ),
                    Panel(
                        "Emails/s by provider and outcome",
                        [
                            (
                                "sum by (provider, outcome) (rate(mailfleet_dispatcher_emails_total"
                                f"[{RATE}]))",
                                "{{provider}} {{outcome}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Error rate",
                        [
                            (
                                "sum by (provider) (rate(mailfleet_dispatcher_emails_total"
                                f'{{outcome=~"failed|unknown"}}[{RATE}])) / sum by (provider) '
                                "(rate(mailfleet_dispatcher_emails_total"
                                f'{{outcome=~"sent|failed|unknown"}}[{RATE}]))',
                                "{{provider}}",
                            )
                        ],
                        unit="percentunit",
                        description="Alert MailfleetProviderErrorRate fires above 5 %.",
                    ),
                ],
            ),
            Row(
                "Throttling",
                [
                    Panel(
                        "429 answers/s",
                        [
                            (
                                f"sum by (provider) (rate(mailfleet_provider_throttled_total[{RATE}]))",
                                "{{provider}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Retries/s by reason",
                        [
                            (
                                "sum by (provider, reason) (rate(mailfleet_provider_retries_total"
                                f"[{RATE}]))",
                                "{{provider}} {{reason}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Sending rate limit (all instances)",
                        [("sum by (provider) (mailfleet_dispatcher_rate_limit)", "{{provider}}")],
                        unit="ops",
                        description="Sum of each dispatcher's share after AIMD back-off (0 ="
                        " unlimited).",
                    ),
                    Panel(
                        "Time waiting for the rate limit",
                        [
                            (
                                "sum by (provider) (rate("
                                f"mailfleet_dispatcher_rate_limit_wait_seconds_total[{RATE}]))",
                                "{{provider}}",
                            )
                        ],
                        unit="s",
                        description="Seconds per second the dispatchers spent waiting for their"
                        " rate limiter (1 = one dispatcher always waiting).",
                    ),
                    Panel(
                        "Batches waiting for a domain throttle",
                        [
                            (
                                "sum by (provider, group) ("
                                "mailfleet_dispatcher_throttle_waiting_batches)",
                                "{{provider}} {{group}}",
                            ),
                            (
                                "sum by (provider) (increase("
                                f"mailfleet_dispatcher_throttle_requeued_total[{RATE}]))",
                                "{{provider}} requeued",
                            ),
                            (
                                "sum by (provider) (increase("
                                f"mailfleet_dispatcher_campaign_cap_waits_total[{RATE}]))",
                                "{{provider}} held by a campaign's rate cap",
                            ),
                        ],
                        description="Batches whose recipient-domain group (gmail, yahoo,"
                        " microsoft, other) or From domain warm-up has no room this window:"
                        " they wait, then go; requeued: put back on batch.ready after"
                        " MAILFLEET_THROTTLE_MAX_WAIT_S; held by a campaign's rate cap: waits"
                        " because a campaign's own max_per_hour was full.",
                    ),
                    Panel(
                        "Circuit breaker open",
                        [("max by (provider) (mailfleet_provider_circuit_open)", "{{provider}}")],
                        custom={"drawStyle": "line", "lineInterpolation": "stepAfter"},
                        description="1 while any dispatcher's breaker for the provider is open.",
                    ),
                    Panel(
                        "Failovers to the fallback provider",
                        [
                            (
                                "sum by (provider, fallback) (increase("
                                f"mailfleet_dispatcher_failovers_total[{RATE}]))",
                                "{{provider}} → {{fallback}}",
                            )
                        ],
                        custom={"drawStyle": "bars"},
                        description="Batches sent through the fallback provider while the"
                        " campaign's provider's breaker was open.",
                    ),
                ],
            ),
        ],
    )


def importer() -> dict[str, Any]:
    rows = "mailfleet_import_rows_total"
    return dashboard(
        "mailfleet-importer",
        "mailfleet / Importer",
        "Recipient imports: rows per second by outcome, import durations, failures, lag.",
        [
            Row(
                "Now",
                [
                    _stat("Rows/s", f"sum(rate({rows}[{RATE}]))", "ops"),
                    _stat(
                        "Rows imported (range)",
                        f'sum(increase({rows}{{outcome=~"imported|updated"}}[$__range]))',
                    ),
                    _stat(
                        "Rejected share (range)",
                        f'sum(increase({rows}{{outcome="rejected"}}[$__range]))'
                        f" / sum(increase({rows}[$__range]))",
                        "percentunit",
                    ),
                    _stat(
                        "Imports failed (range)",
                        'sum(increase(mailfleet_imports_total{status="failed"}[$__range]))',
                    ),
                    _stat(
                        "Imports running",
                        'sum(mailfleet_events_in_flight{topic="import.requested"})',
                    ),
                    _stat(
                        "Imports waiting",
                        'sum(mailfleet_consumer_lag{topic="import.requested"})',
                    ),
                ],
            ),
            Row(
                "Imports",
                [
                    Panel(
                        "Rows/s by outcome",
                        [(f"sum by (outcome) (rate({rows}[{RATE}]))", "{{outcome}}")],
                        unit="ops",
                    ),
                    Panel(
                        "Imports finished by status",
                        [
                            (
                                f"sum by (status) (increase(mailfleet_imports_total[{RATE}]))",
                                "{{status}}",
                            )
                        ],
                        custom={"drawStyle": "bars"},
                    ),
                    Panel(
                        "Import duration (p50, p95)",
                        [
                            (
                                f"histogram_quantile({q}, sum by (le) (rate("
                                f"mailfleet_import_duration_seconds_bucket[{RATE}])))",
                                f"p{int(q * 100)}",
                            )
                            for q in (0.5, 0.95)
                        ],
                        unit="s",
                    ),
                    Panel(
                        "Dead-lettered import requests",
                        [
                            (
                                "sum(increase(mailfleet_dlq_events_total"
                                f'{{topic="import.requested"}}[{RATE}]))',
                                "malformed",
                            ),
                            (
                                "sum(increase(mailfleet_handler_errors_total"
                                f'{{topic="import.requested"}}[{RATE}]))',
                                "handler errors",
                            ),
                        ],
                        custom={"drawStyle": "bars"},
                    ),
                ],
            ),
        ],
    )


def all_dashboards() -> dict[str, dict[str, Any]]:
    return {
        "overview.json": overview(),
        "pipeline.json": pipeline(),
        "provider.json": provider(),
        "importer.json": importer(),
    }


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    DASHBOARDS_DIR.mkdir(parents=True, exist_ok=True)
    for name, board in all_dashboards().items():
        (DASHBOARDS_DIR / name).write_text(render(board))
        print(f"wrote {DASHBOARDS_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
