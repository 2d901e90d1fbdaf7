"""`mailfleet dev`: the whole system on one machine, with embedded defaults."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from pathlib import Path

from rich.console import Console
from rich.table import Table

from libs.common import db
from libs.common.embedded import EmbeddedBroker, EmbeddedPostgres, can_connect, wait_for_port
from libs.common.kafka import ensure_topics
from libs.common.logging import configure
from libs.common.settings import Settings
from libs.common.supervisor import ChildSpec, Supervisor

console = Console()

DEV_POSTGRES_PORT = 55432
DEV_BROKER_PORT = 9092
SINK_PORT = 8025
METRICS_PORTS = {"importer": 9101, "scheduler": 9102, "dispatcher": 9103, "tracker": 9104}
# The reputation guard, past the bounce poller's port.
GUARD_METRICS_PORT = 9121
# Outbound webhooks, past the guard's.
WEBHOOKS_METRICS_PORT = 9122
# Automations, past the webhooks'.
AUTOMATIONS_METRICS_PORT = 9123
# Past the dispatchers' ports (9103, then 9105 up to 9115 for 12 of them).
BOUNCES_METRICS_PORT = 9120


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _persistent_secret(path: Path, make: str) -> str:
    """A value generated once and kept under the data dir, so restarts keep the same key."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(make + "\n")
    path.chmod(0o600)
    return make


DEV_ADMIN_EMAIL = "admin@mailfleet.local"


def _console_admin(settings: Settings, data_dir: Path, env: dict[str, str]) -> str:
    """The console's first admin for the children's environment; what to tell the person.

    Without MAILFLEET_ADMIN_EMAIL/PASSWORD a password is generated once and kept (mode
    0600) beside the generated API key, so that a restart signs in with the same one.
    """
    email = settings.admin_email or DEV_ADMIN_EMAIL
    env["MAILFLEET_ADMIN_EMAIL"] = email
    if settings.admin_password:
        return f"{email} (password from MAILFLEET_ADMIN_PASSWORD)"
    password = _persistent_secret(data_dir / "admin-password", secrets.token_urlsafe(18))
    env["MAILFLEET_ADMIN_PASSWORD"] = password
    return f"{email} / password {password}"


def child_specs(dispatchers: int, with_sink: bool, with_bounces: bool = False) -> list[ChildSpec]:
    specs = [ChildSpec("api", "api"), ChildSpec("edge", "edge")]
    for service in ("importer", "scheduler", "tracker"):
        specs.append(
            ChildSpec(service, service, {"MAILFLEET_METRICS_PORT": str(METRICS_PORTS[service])})
        )
    for n in range(dispatchers):
        port = METRICS_PORTS["dispatcher"] if n == 0 else 9104 + n
        specs.append(
            ChildSpec(f"dispatcher-{n + 1}", "dispatcher", {"MAILFLEET_METRICS_PORT": str(port)})
        )
    specs.append(ChildSpec("guard", "guard", {"MAILFLEET_METRICS_PORT": str(GUARD_METRICS_PORT)}))
    specs.append(
        ChildSpec("webhooks", "webhooks", {"MAILFLEET_METRICS_PORT": str(WEBHOOKS_METRICS_PORT)})
    )
    specs.append(
        ChildSpec(
            "automations", "automations", {"MAILFLEET_METRICS_PORT": str(AUTOMATIONS_METRICS_PORT)}
        )
    )
    if with_bounces:  # only with a bounce mailbox configured (MAILFLEET_BOUNCE_IMAP_HOST)
        specs.append(
            ChildSpec("bounces", "bounces", {"MAILFLEET_METRICS_PORT": str(BOUNCES_METRICS_PORT)})
        )
    if with_sink:
        specs.insert(0, ChildSpec("sink", "sink", {"MAILFLEET_SINK_PORT": str(SINK_PORT)}))
    return specs


async def run_dev_stack(dispatchers: int, data_dir: Path) -> None:
    from libs.common.cli import generate_key

    configure("dev")
    settings = Settings()
    data_dir = data_dir.resolve()
    env: dict[str, str] = {"MAILFLEET_CHILD": "1"}
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None

    database_url = settings.database_url
    if not database_url:
        postgres = EmbeddedPostgres(data_dir / "pg", port=DEV_POSTGRES_PORT)
        if not await can_connect(postgres.dsn):  # a previous run may have left it running
            console.print("starting embedded PostgreSQL …")
            await asyncio.to_thread(postgres.start)
        database_url = postgres.dsn
    bootstrap = settings.kafka_bootstrap_servers
    if not bootstrap:
        port = DEV_BROKER_PORT if _port_free(DEV_BROKER_PORT) else None
        broker = EmbeddedBroker(port=port, log_path=data_dir / "logs" / "broker.log")
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        bootstrap = await asyncio.to_thread(broker.start)
    env["DATABASE_URL"] = database_url
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap

    api_key = settings.bootstrap_api_key or _persistent_secret(
        data_dir / "admin-key", generate_key()
    )
    env["MAILFLEET_BOOTSTRAP_API_KEY"] = api_key
    console_login = _console_admin(settings, data_dir, env)
    if not settings.secret_key:
        env["MAILFLEET_SECRET_KEY"] = _persistent_secret(data_dir / "secret-key", generate_key())
    with_sink = settings.default_provider == "sink" and "MAILFLEET_SINK_URL" not in os.environ
    if with_sink:
        env["MAILFLEET_SINK_URL"] = f"http://127.0.0.1:{SINK_PORT}"
        env["MAILFLEET_SINK_RECORD"] = str(data_dir / "sink" / "messages.jsonl")
        (data_dir / "sink").mkdir(parents=True, exist_ok=True)

    await db.migrate(database_url)
    await ensure_topics(settings.model_copy(update={"kafka_bootstrap_servers": bootstrap}))

    supervisor = Supervisor(env, data_dir / "logs")
    await supervisor.start(
        child_specs(dispatchers, with_sink, with_bounces=bool(settings.bounce_imap_host))
    )
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    edge_url = f"http://{settings.edge_host}:{settings.edge_port}"
    for name, host, port in (
        ("API", settings.api_host, settings.api_port),
        ("edge", settings.edge_host, settings.edge_port),
    ):
        try:
            await asyncio.to_thread(wait_for_port, host, port, 60)
        except TimeoutError:
            log_file = data_dir / "logs" / f"{name.lower()}.log"
            console.print(f"[red]the {name} did not start; see {log_file}[/red]")
    # The console password goes to this terminal only (the banner), never into a log line.
    _print_banner(
        api_url,
        edge_url,
        api_key,
        console_login,
        bootstrap,
        database_url,
        with_sink,
        data_dir,
        supervisor,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    console.print("stopping …")
    await supervisor.stop()
    if broker is not None:
        broker.stop()
    if postgres is not None:
        await asyncio.to_thread(postgres.stop)
    console.print("stopped.")


def _shown_login(console_login: str, data_dir: Path) -> str:
    """The generated console password only on a terminal, like the key."""
    if console.is_terminal or " / password " not in console_login:
        return console_login
    email = console_login.split(" / password ", 1)[0]
    return f"{email}, password in {data_dir / 'admin-password'} (not shown: not a terminal)"


def _shown_key(api_key: str, data_dir: Path) -> str:
    """The key itself only on a terminal: redirected output is a log file."""
    if console.is_terminal:
        return api_key
    stored = data_dir / "admin-key"
    if stored.exists() and stored.read_text().strip() == api_key:
        return f"in {stored} (not shown: the output is not a terminal)"
    return "MAILFLEET_BOOTSTRAP_API_KEY (not shown: the output is not a terminal)"


def _print_banner(
    api_url: str,
    edge_url: str,
    api_key: str,
    console_login: str,
    bootstrap: str,
    database_url: str,
    with_sink: bool,
    data_dir: Path,
    supervisor: Supervisor,
) -> None:
    table = Table(title="mailfleet is running", show_header=False)
    table.add_row("API", api_url)
    table.add_row("API docs", f"{api_url}/docs")
    table.add_row("Console", f"{api_url}/console")
    table.add_row("Console sign-in", _shown_login(console_login, data_dir))
    table.add_row("Edge (public: unsubscribe, webhooks)", edge_url)
    table.add_row("Admin API key", _shown_key(api_key, data_dir))
    table.add_row("Kafka", bootstrap)
    table.add_row("PostgreSQL", database_url)
    if with_sink:
        table.add_row("Sink (mail 'sent')", f"http://127.0.0.1:{SINK_PORT}/sink/messages")
    for service, port in METRICS_PORTS.items():
        table.add_row(f"{service} metrics", f"http://127.0.0.1:{port}/metrics")
    table.add_row("guard metrics", f"http://127.0.0.1:{GUARD_METRICS_PORT}/metrics")
    table.add_row("webhooks metrics", f"http://127.0.0.1:{WEBHOOKS_METRICS_PORT}/metrics")
    table.add_row("automations metrics", f"http://127.0.0.1:{AUTOMATIONS_METRICS_PORT}/metrics")
    table.add_row("Logs", f"{data_dir / 'logs'}/<service>.log")
    table.add_row("Processes", ", ".join(supervisor.children))
    console.print(table)
    console.print("Press Ctrl-C to stop everything.")
