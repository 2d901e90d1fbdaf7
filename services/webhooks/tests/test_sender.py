"""The sender against a real HTTPS receiver: signatures, exact counts, retries in order per
campaign, endpoints disabled after a streak, SSRF refusals, TLS always verified."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from libs.common.events import DeliveryEvent
from libs.common.kafka import Consumed
from libs.common.settings import Settings
from libs.webhooks.targets import TargetPolicy, TargetRefused
from services.api import webhooks_repo
from services.webhooks import metrics
from services.webhooks.app import Outbox, Sender, maintain
from services.webhooks.http import CheckingResolver, WebhookClient, ssl_context
from services.webhooks.mapping import from_delivery_event
from services.webhooks.store import WebhookStore
from services.webhooks.tests.support import (
    Receiver,
    Tls,
    add_endpoint,
    log_rows,
    retire_endpoints,
    start_receiver,
    wait_for,
)

KINDS = ["delivered", "open", "click", "bounce", "spamreport"]


def events_for(campaign: uuid.UUID, count: int) -> list[DeliveryEvent]:
    now = datetime.now(UTC)
    return [
        DeliveryEvent(
            event_id=f"{campaign}-{n}",
            campaign_id=campaign,
            recipient_id=n,
            email=f"r{n}@example.com",
            event=KINDS[n % len(KINDS)],  # type: ignore[arg-type]
            provider="sink",
            occurred_at=now + timedelta(milliseconds=n),
        )
        for n in range(count)
    ]


def expected_ids(events: list[DeliveryEvent]) -> list[str]:
    return [str(o.event_id) for e in events if (o := from_delivery_event(e))]


async def enqueue(pool: asyncpg.Pool, events: list[DeliveryEvent]) -> None:
    await Outbox(WebhookStore(pool)).on_delivery([Consumed(e, 0, n) for n, e in enumerate(events)])


@contextlib.asynccontextmanager
async def receiving(tls: Tls) -> AsyncIterator[Receiver]:
    receiver = Receiver()
    runner = await start_receiver(receiver, tls)
    try:
        yield receiver
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def sending(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[Sender]:
    client = WebhookClient(
        settings.webhook_target_policy(), settings.webhook_ca_file, settings.webhook_timeout_s
    )
    await client.start()
    sender = Sender(WebhookStore(pool), client, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        yield sender
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.close()


ALL_DELIVERY = ["delivery.delivered", "delivery.open", "delivery.click", "delivery.bounce",
                "delivery.complaint"]  # fmt: skip


async def test_every_delivery_signed_and_counted_exactly(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    async with receiving(tls) as receiver:
        opens_only = await add_endpoint(
            pool, webhook_settings.secret_key, f"{receiver.url}/opens", ["delivery.open"],
            receiver,
        )  # fmt: skip
        everything = await add_endpoint(
            pool, webhook_settings.secret_key, f"{receiver.url}/all", ALL_DELIVERY, receiver
        )
        try:
            campaigns = [uuid.uuid4() for _ in range(3)]
            events = [e for c in campaigns for e in events_for(c, 20)]
            await enqueue(pool, events)
            await enqueue(pool, events[:30])  # a redelivered Kafka batch: no new rows
            wanted = len(events) + sum(1 for e in events if e.event == "open")
            async with sending(pool, webhook_settings):
                await wait_for(
                    lambda: len(receiver.delivered({str(c) for c in campaigns})) >= wanted,
                    what="all deliveries",
                )
            assert receiver.bad_signatures == []
            mine = receiver.delivered({str(c) for c in campaigns})
            assert len(mine) == wanted  # exactly: none twice
            by_id = [r.event_id for r in mine]
            assert len(set(by_id)) == len(events)  # opens went to both endpoints
            assert sorted(r.event_id for r in mine if r.event_type != "delivery.open") == sorted(
                expected_ids([e for e in events if e.event != "open"])
            )
            for endpoint in (opens_only, everything):
                rows = await log_rows(pool, endpoint)
                assert {r["status"] for r in rows} == {"delivered"}
                assert all(r["attempts"] == 1 and r["last_status_code"] == 200 for r in rows)
            assert len(await log_rows(pool, opens_only)) == sum(e.event == "open" for e in events)
        finally:
            await retire_endpoints(pool, [opens_only, everything])


async def test_failing_receiver_gets_everything_once_it_recovers_in_order(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    async with receiving(tls) as receiver:
        healthy = False
        receiver.answer = lambda body: 200 if healthy else 500
        endpoint = await add_endpoint(
            pool, webhook_settings.secret_key, f"{receiver.url}/flaky", ALL_DELIVERY, receiver
        )
        try:
            campaigns = [uuid.uuid4() for _ in range(3)]
            events = [e for c in campaigns for e in events_for(c, 15)]
            await enqueue(pool, events)
            async with sending(pool, webhook_settings):
                # Down for a while: each campaign's first event is retried with backoff...
                await wait_for(
                    lambda: sum(r.status == 500 for r in receiver.received) >= 12,
                    what="a dozen failed attempts",
                )
                failed = {r.event_id for r in receiver.received if r.status == 500}
                heads = {expected_ids(events_for(c, 1))[0] for c in campaigns}
                # ...and nothing behind a failing head was tried: order per campaign.
                assert failed <= heads
                healthy = True
                await wait_for(lambda: len(receiver.delivered()) >= len(events), what="recovery")
            delivered = receiver.delivered({str(c) for c in campaigns})
            assert len(delivered) == len(events)
            for campaign in campaigns:
                got = [r.event_id for r in delivered if r.campaign_id == str(campaign)]
                assert got == expected_ids([e for e in events if e.campaign_id == campaign])
            rows = await log_rows(pool, endpoint)
            assert {r["status"] for r in rows} == {"delivered"}
            assert max(r["attempts"] for r in rows) >= 2
            state = await pool.fetchrow(
                "SELECT enabled, failure_streak FROM webhook_endpoints WHERE id = $1", endpoint
            )
            assert state is not None and state["enabled"] and state["failure_streak"] == 0
        finally:
            await retire_endpoints(pool, [endpoint])


async def test_a_failing_campaign_holds_back_only_its_own_events(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    stuck, flowing = uuid.uuid4(), uuid.uuid4()
    async with receiving(tls) as receiver:
        receiver.answer = lambda body: 503 if body["campaign_id"] == str(stuck) else 200
        endpoint = await add_endpoint(
            pool, webhook_settings.secret_key, f"{receiver.url}/hold", ALL_DELIVERY, receiver
        )
        try:
            await enqueue(pool, events_for(stuck, 5) + events_for(flowing, 10))
            async with sending(pool, webhook_settings):
                await wait_for(lambda: len(receiver.delivered()) >= 10, what="other campaign")
                await wait_for(
                    lambda: sum(r.campaign_id == str(stuck) for r in receiver.received) >= 3,
                    what="retries of the stuck campaign",
                )
            stuck_ids = {r.event_id for r in receiver.received if r.campaign_id == str(stuck)}
            assert stuck_ids == {expected_ids(events_for(stuck, 1))[0]}
            rows = await log_rows(pool, endpoint)
            assert [r["status"] for r in rows if r["order_key"] == str(stuck)] == ["pending"] * 5
            assert [r["last_status_code"] for r in rows if r["order_key"] == str(stuck)][0] == 503
        finally:
            await retire_endpoints(pool, [endpoint])


async def test_endpoint_disabled_after_a_streak_of_failures(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    settings = webhook_settings.model_copy(update={"webhook_disable_after_failures": 4})
    before = metrics.ENDPOINTS_DISABLED._value.get()  # noqa: SLF001
    async with receiving(tls) as receiver:
        receiver.answer = lambda body: 500
        endpoint = await add_endpoint(
            pool, settings.secret_key, f"{receiver.url}/down", ALL_DELIVERY, receiver
        )
        try:
            await enqueue(pool, events_for(uuid.uuid4(), 3))

            async def disabled() -> bool:
                return not await pool.fetchval(
                    "SELECT enabled FROM webhook_endpoints WHERE id = $1", endpoint
                )

            async with sending(pool, settings):
                await wait_for(disabled, what="the endpoint disabled")
                attempts = len(receiver.received)
            assert attempts == 4  # none after it was disabled
            row = await pool.fetchrow(
                "SELECT disabled_reason, failure_streak, last_error FROM webhook_endpoints"
                " WHERE id = $1",
                endpoint,
            )
            assert row is not None
            assert row["disabled_reason"] == "failing" and row["failure_streak"] == 4
            assert row["last_error"] == "HTTP 500"
            assert metrics.ENDPOINTS_DISABLED._value.get() == before + 1  # noqa: SLF001
            # Its deliveries wait, for an admin to re-enable it (within the retry window).
            assert {r["status"] for r in await log_rows(pool, endpoint)} == {"pending"}
        finally:
            await retire_endpoints(pool, [endpoint])


async def test_given_up_after_the_retry_window_and_the_next_event_goes(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    settings = webhook_settings.model_copy(update={"webhook_retry_window_s": 0.3})
    campaign = uuid.uuid4()
    events = events_for(campaign, 3)
    first = expected_ids(events)[0]
    async with receiving(tls) as receiver:
        receiver.answer = lambda body: 500 if body["id"] == first else 200
        endpoint = await add_endpoint(
            pool, settings.secret_key, f"{receiver.url}/window", ALL_DELIVERY, receiver
        )
        try:
            await enqueue(pool, events)
            async with sending(pool, settings):
                await wait_for(lambda: len(receiver.delivered()) >= 2, what="the later events")
            rows = await log_rows(pool, endpoint)
            assert [r["status"] for r in rows] == ["failed", "delivered", "delivered"]
            # Tried until the window closed (how often depends on the machine's load).
            assert rows[0]["attempts"] >= 1 and rows[0]["last_status_code"] == 500
        finally:
            await retire_endpoints(pool, [endpoint])


async def test_loopback_refused_unless_allowed(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    closed = webhook_settings.model_copy(update={"webhook_allowed_targets": ""})
    async with receiving(tls) as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        # A literal address, and a name that resolves to loopback (checked at delivery).
        literal = await add_endpoint(
            pool, closed.secret_key, f"{receiver.url}/literal", ALL_DELIVERY, receiver
        )
        named = await add_endpoint(
            pool, closed.secret_key, f"https://localhost:{port}/named", ALL_DELIVERY, receiver
        )
        try:
            await enqueue(pool, events_for(uuid.uuid4(), 1))
            async with sending(pool, closed):

                async def both_refused() -> bool:
                    rows = await log_rows(pool, literal) + await log_rows(pool, named)
                    return all(r["attempts"] >= 2 for r in rows)

                await wait_for(both_refused, what="refused attempts")
            assert receiver.received == [] and receiver.bad_signatures == []
            for endpoint in (literal, named):
                (row,) = await log_rows(pool, endpoint)
                assert row["status"] == "pending"
                assert row["last_error"].startswith("refused:"), row["last_error"]
                assert "private or special-purpose" in row["last_error"]
            # Allowed: the same literal endpoint is delivered to.
            await retire_endpoints(pool, [named])
            async with sending(pool, webhook_settings):
                await wait_for(lambda: len(receiver.delivered()) >= 1, what="allowed delivery")
            assert [r["status"] for r in await log_rows(pool, literal)] == ["delivered"]
        finally:
            await retire_endpoints(pool, [literal, named])


async def test_redirects_are_not_followed(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    async with receiving(tls) as receiver:
        receiver.answer = lambda body: 302
        endpoint = await add_endpoint(
            pool, webhook_settings.secret_key, f"{receiver.url}/moved", ALL_DELIVERY, receiver
        )
        try:
            await enqueue(pool, events_for(uuid.uuid4(), 1))
            async with sending(pool, webhook_settings):
                await wait_for(lambda: len(receiver.received) >= 2, what="two attempts")
            (row,) = await log_rows(pool, endpoint)
            assert row["status"] == "pending" and row["last_status_code"] == 302
            assert "redirect" in row["last_error"]
        finally:
            await retire_endpoints(pool, [endpoint])


async def test_certificates_are_verified(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    """Without the test CA configured the receiver's certificate is refused."""
    untrusting = webhook_settings.model_copy(update={"webhook_ca_file": ""})
    async with receiving(tls) as receiver:
        endpoint = await add_endpoint(
            pool, untrusting.secret_key, f"{receiver.url}/tls", ALL_DELIVERY, receiver
        )
        try:
            await enqueue(pool, events_for(uuid.uuid4(), 1))
            async with sending(pool, untrusting):

                async def tried() -> bool:
                    return any(
                        r["attempts"] >= 1 and r["last_error"]
                        for r in await log_rows(pool, endpoint)
                    )

                await wait_for(tried, what="a failed attempt")
            (row,) = await log_rows(pool, endpoint)
            assert "certificate" in row["last_error"].lower(), row["last_error"]
            assert receiver.received == []
        finally:
            await retire_endpoints(pool, [endpoint])


async def test_disabled_for_failing_keeps_events_until_re_enabled(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    settings = webhook_settings.model_copy(update={"webhook_disable_after_failures": 2})
    async with receiving(tls) as receiver:
        healthy = False
        receiver.answer = lambda body: 200 if healthy else 500
        failing = await add_endpoint(
            pool, settings.secret_key, f"{receiver.url}/fix", ALL_DELIVERY, receiver
        )
        paused = await add_endpoint(
            pool, settings.secret_key, f"{receiver.url}/paused", ALL_DELIVERY, receiver
        )
        await webhooks_repo.update_endpoint(pool, paused, {"enabled": False})  # by an admin
        try:
            campaign = uuid.uuid4()
            events = events_for(campaign, 4)
            await enqueue(pool, events[:2])

            async def disabled() -> bool:
                return not await pool.fetchval(
                    "SELECT enabled FROM webhook_endpoints WHERE id = $1", failing
                )

            async with sending(pool, settings):
                await wait_for(disabled, what="the endpoint disabled")
            # Events go on arriving while it is disabled for failing: they are kept...
            await enqueue(pool, events[2:])
            assert len(await log_rows(pool, failing)) == 4
            # ...while an endpoint an admin disabled gets none.
            assert await log_rows(pool, paused) == []
            healthy = True
            await webhooks_repo.update_endpoint(pool, failing, {"enabled": True})
            async with sending(pool, settings):
                await wait_for(lambda: len(receiver.delivered()) >= 4, what="the backlog")
            assert [r.event_id for r in receiver.delivered()] == expected_ids(events)
        finally:
            await retire_endpoints(pool, [failing, paused])


async def test_maintenance_expires_disabled_backlogs_and_prunes_the_log(
    pool: asyncpg.Pool, webhook_settings: Settings
) -> None:
    endpoint = await add_endpoint(
        pool, webhook_settings.secret_key, "https://127.0.0.1:9/m", ALL_DELIVERY
    )
    try:
        await enqueue(pool, events_for(uuid.uuid4(), 3))
        await pool.execute(
            "UPDATE webhook_deliveries SET status = 'delivered' WHERE endpoint_id = $1"
            " AND seq = (SELECT min(seq) FROM webhook_deliveries WHERE endpoint_id = $1)",
            endpoint,
        )
        store = WebhookStore(pool)
        day = timedelta(days=1)
        await maintain(store, webhook_settings, datetime.now(UTC) + 2 * day)
        # Enabled: the sender itself gives up at the next attempt; nothing expired here.
        assert [r["status"] for r in await log_rows(pool, endpoint)] == [
            "delivered",
            "pending",
            "pending",
        ]
        await webhooks_repo.update_endpoint(pool, endpoint, {"enabled": False})
        before = metrics.EXPIRED._value.get()  # noqa: SLF001
        await maintain(store, webhook_settings, datetime.now(UTC) + 2 * day)
        rows = await log_rows(pool, endpoint)
        assert [r["status"] for r in rows] == ["delivered", "failed", "failed"]
        assert rows[1]["last_error"].startswith("expired")
        assert metrics.EXPIRED._value.get() == before + 2  # noqa: SLF001
        await maintain(store, webhook_settings, datetime.now(UTC) + 31 * day)
        assert await log_rows(pool, endpoint) == []
    finally:
        await retire_endpoints(pool, [endpoint])


def test_an_unreadable_ca_file_stops_the_service_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("not a certificate")
    for path in (str(bad), str(tmp_path / "missing.pem")):
        with pytest.raises(SystemExit, match="MAILFLEET_WEBHOOK_CA_FILE"):
            ssl_context(path)


@pytest.mark.parametrize("host", ["localhost", "127.1", "2130706433", "0x7f.0.0.1", "0"])
async def test_names_that_resolve_to_loopback_are_refused(host: str) -> None:
    """Spellings of 127.0.0.1 that are not an address literal reach the resolver, which
    checks what they resolve to."""
    resolver = CheckingResolver(TargetPolicy.parse("", require_https=True))
    try:
        with pytest.raises(TargetRefused, match="private or special-purpose"):
            await resolver.resolve(host, 443)
    finally:
        await resolver.close()
    allowing = CheckingResolver(TargetPolicy.parse("127.0.0.0/8,::1/128", require_https=True))
    try:
        assert await allowing.resolve("localhost", 443)
    finally:
        await allowing.close()


async def test_a_slow_endpoint_holds_one_slot_not_the_others(
    pool: asyncpg.Pool, webhook_settings: Settings, tls: Tls
) -> None:
    async with receiving(tls) as receiver:
        receiver.gates["/slow"] = asyncio.Event()
        slow = await add_endpoint(
            pool, webhook_settings.secret_key, f"{receiver.url}/slow", ALL_DELIVERY, receiver
        )
        fast = await add_endpoint(
            pool, webhook_settings.secret_key, f"{receiver.url}/fast", ALL_DELIVERY, receiver
        )
        try:
            campaigns = [uuid.uuid4() for _ in range(4)]
            events = [e for c in campaigns for e in events_for(c, 10)]
            await enqueue(pool, events)
            async with sending(pool, webhook_settings):
                # Every event reaches the fast endpoint while the slow one answers nothing.
                await wait_for(
                    lambda: len(receiver.delivered({str(c) for c in campaigns})) >= len(events),
                    what="the fast endpoint's deliveries",
                )
                assert {r["status"] for r in await log_rows(pool, slow)} == {"pending"}
                receiver.gates["/slow"].set()
                await wait_for(
                    lambda: len(receiver.delivered({str(c) for c in campaigns})) >= 2 * len(events),
                    what="the slow endpoint's deliveries",
                )
            for endpoint in (slow, fast):
                assert {r["status"] for r in await log_rows(pool, endpoint)} == {"delivered"}
        finally:
            await retire_endpoints(pool, [slow, fast])
