"""The `mailfleet` command: run one service, or the whole stack on embedded defaults."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="mailfleet: bulk email campaigns over Kafka.", no_args_is_help=True)

# Service name -> "module:function" that runs it in the foreground.
SERVICES = {
    "api": "services.api.app:run",
    "edge": "services.edge.app:run",
    "importer": "services.importer.app:run",
    "scheduler": "services.scheduler.app:run",
    "dispatcher": "services.dispatcher.app:run",
    "tracker": "services.tracker.app:run",
    "bounces": "services.bounces.app:run",
    "guard": "services.guard.app:run",
    "webhooks": "services.webhooks.app:run",
    "automations": "services.automations.app:run",
    "sink": "libs.mail.sink:run_sink",
}


@app.command()
def run(service: Annotated[str, typer.Argument(help=", ".join(SERVICES))]) -> None:
    """Run one service in the foreground (configured by environment variables)."""
    if service not in SERVICES:
        raise typer.BadParameter(
            f"unknown service {service!r}; choose one of {', '.join(SERVICES)}"
        )
    module, func = SERVICES[service].split(":")
    getattr(importlib.import_module(module), func)()


@app.command()
def dev(
    dispatchers: Annotated[int, typer.Option(min=1, max=12, help="Dispatcher processes.")] = 1,
    data_dir: Annotated[Path, typer.Option(help="Where embedded data and logs live.")] = Path(
        ".mailfleet"
    ),
) -> None:
    """Run the whole system: embedded broker and PostgreSQL unless configured, the sink
    provider unless another is configured, and every service as its own process."""
    from libs.common.devstack import run_dev_stack

    asyncio.run(run_dev_stack(dispatchers=dispatchers, data_dir=data_dir))


@app.command()
def migrate() -> None:
    """Apply database migrations to DATABASE_URL."""
    from libs.common import db
    from libs.common.settings import get_settings

    applied = asyncio.run(db.migrate(get_settings().database_url))
    typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}")


@app.command("create-topics")
def create_topics() -> None:
    """Create every Kafka topic with its partition count on KAFKA_BOOTSTRAP_SERVERS."""
    from libs.common.kafka import ensure_topics
    from libs.common.settings import get_settings

    created = asyncio.run(ensure_topics(get_settings()))
    typer.echo(f"created {len(created)} topic(s): {', '.join(created) or 'all existed'}")


@app.command("export-schemas")
def export_schemas(
    out: Annotated[Path, typer.Option(help="Folder for the JSON Schemas.")] = Path("docs/events"),
) -> None:
    """Write the JSON Schema of every event to `out`/<topic>.v1.json."""
    from libs.common.events import export_json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for topic, schema in export_json_schemas().items():
        (out / f"{topic}.v1.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    typer.echo(f"wrote {out}")


@app.command("import")
def import_file(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV, .csv.gz or XLSX.")
    ],
    list_id: Annotated[str, typer.Option("--list", help="Id of the list to import into.")],
    api: Annotated[
        str, typer.Option(envvar="MAILFLEET_API_URL", help="Base URL of the mailfleet API.")
    ] = "http://127.0.0.1:8000",
    key: Annotated[
        str, typer.Option(envvar="MAILFLEET_API_KEY", help="API key (editor or admin).")
    ] = "",
    email_column: Annotated[str | None, typer.Option(help="Header of the address column.")] = None,
    encoding: Annotated[str | None, typer.Option(help="CSV encoding, e.g. cp1252.")] = None,
    delimiter: Annotated[str | None, typer.Option(help="CSV delimiter.")] = None,
    sheet: Annotated[str | None, typer.Option(help="Sheet of a workbook.")] = None,
) -> None:
    """Upload FILE into a list through the API, with a progress bar and a summary."""
    from libs.common.import_cli import ImportClient, ImportFailed, ImportRequest

    if not key:
        raise typer.BadParameter("an API key is needed: --key or MAILFLEET_API_KEY")
    request = ImportRequest(file, list_id, email_column, encoding, delimiter, sheet)
    try:
        job = asyncio.run(ImportClient(api, key).run(request))
    except ImportFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if job["status"] != "completed":
        raise typer.Exit(1)


def generate_key() -> str:
    return "mf_" + secrets.token_urlsafe(32)


def main() -> None:
    # Ctrl-C in a child must not print a traceback; the supervisor stops children itself.
    if os.environ.get("MAILFLEET_CHILD"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    app()


if __name__ == "__main__":
    main()
