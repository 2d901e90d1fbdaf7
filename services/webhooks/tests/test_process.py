"""`mailfleet run webhooks` as its own process under the dev supervisor: ops endpoints,
and no delivery lost or doubled when the process is SIGKILLed while an endpoint fails."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg

from libs.common.embedded import free_port, wait_for_port
from libs.common.events import DeliveryEvent, Topic
from libs.common.kafka import EventProducer
from libs.common.settings import Settings
from libs.common.supervisor import ChildSpec, Supervisor
from services.webhooks.mapping import from_delivery_event
from services.webhooks.tests.support import (
    Receiver,
    Tls,
    add_endpoint,
    log_rows,
    retire_endpoints,
    start_receiver,
    wait_for,
)


async def test_killed_process_loses_and_doubles_nothing(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls, tmp_path: Path
) -> None:
    s = webhook_settings
    metrics_port = free_port()
    env = {
        "DATABASE_URL": s.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "MAILFLEET_SECRET_KEY": s.secret_key,
        "MAILFLEET_METRICS_PORT": str(metrics_port),
        "MAILFLEET_WEBHOOK_CA_FILE": s.webhook_ca_file,
        "MAILFLEET_WEBHOOK_ALLOWED_TARGETS": s.webhook_allowed_targets,
        "MAILFLEET_WEBHOOK_BACKOFF_BASE_S": "0.05",
        "MAILFLEET_WEBHOOK_BACKOFF_CAP_S": "0.2",
        "MAILFLEET_WEBHOOK_POLL_S": "0.05",
        "MAILFLEET_WEBHOOK_TIMEOUT_S": "2",
        "MAILFLEET_KAFKA_SESSION_TIMEOUT_MS": "3000",
        "MAILFLEET_KAFKA_HEARTBEAT_MS": "500",
        "MAILFLEET_CHILD": "1",
    }
    receiver = Receiver()
    healthy = False
    receiver.answer = lambda body: 200 if healthy else 500
    runner = await start_receiver(receiver, tls)
    endpoint = await add_endpoint(
        pool, s.secret_key, f"{receiver.url}/proc", ["delivery.click"], receiver
    )
    supervisor = Supervisor(env, tmp_path / "logs")
    producer = EventProducer(s)
    await producer.start()
    campaign = uuid.uuid4()
    events = [
        DeliveryEvent(
            event_id=f"{campaign}-click-{n}",
            campaign_id=campaign,
            recipient_id=n,
            email=f"c{n}@example.com",
            event="click",
            provider="sink",
            occurred_at=datetime.now(UTC),
            detail={"url": f"https://example.com/{n}"},
        )
        for n in range(6)
    ]
    try:
        await supervisor.start([ChildSpec("webhooks", "webhooks")])
        await asyncio.to_thread(wait_for_port, "127.0.0.1", metrics_port, 60)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{metrics_port}") as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(path) as answer:
                    assert answer.status == 200, (path, await answer.text())
            async with http.get("/metrics") as answer:
                text = await answer.text()
            assert 'mailfleet_webhook_attempts_total{outcome="delivered"} 0.0' in text
            assert "mailfleet_webhook_pending" in text

        await producer.send_many(Topic.DELIVERY_EVENT, [(str(campaign), e) for e in events])
        await wait_for(
            lambda: sum(r.status == 500 for r in receiver.received) >= 3,
            timeout=60,
            what="failing attempts",
        )
        supervisor.kill("webhooks", signal.SIGKILL)  # restarted by the supervisor
        await wait_for(lambda: supervisor.children["webhooks"].starts >= 2, what="the restart")
        # Healthy only now: an attempt the killed process had in flight was answered 500
        # (had it been answered 200, at-least-once would rightly send it again).
        healthy = True
        await wait_for(
            lambda: len(receiver.delivered({str(campaign)})) >= len(events),
            timeout=60,
            what="every click after the restart",
        )
        delivered = receiver.delivered({str(campaign)})
        expected = [str(o.event_id) for e in events if (o := from_delivery_event(e))]
        assert [r.event_id for r in delivered] == expected  # once each, in order
        assert receiver.bad_signatures == []
        assert delivered[0].body["data"]["url"] == "https://example.com/0"
        rows = [r for r in await log_rows(pool, endpoint) if r["order_key"] == str(campaign)]
        assert len(rows) == len(events) and {r["status"] for r in rows} == {"delivered"}
    finally:
        await supervisor.stop()
        await producer.stop()
        await retire_endpoints(pool, [endpoint])
        await runner.cleanup()
