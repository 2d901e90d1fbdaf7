"""The SendGrid client against the local sink: acceptance, retries, 429, 4xx, timeouts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from libs.common.events import BatchRecipient, RecipientOutcome
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Outbox
from libs.mail.providers.sendgrid import RetryPolicy, SendGridProvider
from libs.mail.rate_limit import RateLimiter
from libs.mail.rendering import Content, build_outbox
from libs.mail.sink import SinkHandle, start_sink

POLICY = HeaderPolicy("https://mail.example.com", "k")
FAST_RETRY = RetryPolicy(max_attempts=3, initial_s=0.01, max_wait_s=0.05)


@pytest.fixture
async def sink() -> AsyncIterator[SinkHandle]:
    handle = await start_sink("127.0.0.1", 0)
    yield handle
    await handle.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def provider(sink: SinkHandle, session: aiohttp.ClientSession, **kw: Any) -> SendGridProvider:
    return SendGridProvider(
        "sink",
        sink.url,
        "test-key",
        session,
        concurrency=4,
        limiter=kw.pop("limiter", RateLimiter(0)),
        retry=kw.pop("retry", FAST_RETRY),
        **kw,
    )


def outbox(
    n: int, html: str = "<p>Hi {{ first_name }}</p>", campaign: uuid.UUID | None = None
) -> Outbox:
    campaign = campaign or uuid.uuid4()
    c = Content(uuid.uuid4(), campaign, "Hello {{ first_name }}", html, None, "n@example.com", None)
    people = [
        BatchRecipient(recipient_id=i, email=f"user{i}@example.com", fields={"first_name": f"F{i}"})
        for i in range(n)
    ]
    return build_outbox(c, campaign, f"{campaign}:0", people, POLICY)


async def send(
    p: SendGridProvider, box: Outbox
) -> tuple[list[RecipientOutcome], list[list[RecipientOutcome]]]:
    progress: list[list[RecipientOutcome]] = []

    async def record(outcomes: list[RecipientOutcome]) -> None:
        progress.append(outcomes)

    return await p.send(box, record), progress


async def test_templated_batch_is_accepted_in_thousand_recipient_requests(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    outcomes, progress = await send(provider(sink, session), outbox(2100))
    assert sink.stats()["accepted_requests"] == 3
    assert sorted(len(p) for p in progress) == [100, 1000, 1000]
    assert {o.status for o in outcomes} == {"sent"}
    assert len({o.message_id for o in outcomes}) == 3
    by_email = {m.email: m for m in sink.messages}
    assert len(by_email) == 2100 and sink.stats()["duplicates"] == 0
    assert by_email["user42@example.com"].subject == "Hello F42"
    assert by_email["user42@example.com"].html == "<p>Hi F42</p>"
    assert by_email["user42@example.com"].text == "Hi F42\n"
    assert by_email["user42@example.com"].custom_args["recipient_id"] == "42"


async def test_server_errors_and_timeouts_are_retried(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    sink.inject_fault(500, count=1)
    sink.inject_fault(202, count=1, delay_s=1.0)  # slower than the client's timeout
    outcomes, _ = await send(provider(sink, session, timeout_s=0.3), outbox(10))
    assert {o.status for o in outcomes} == {"sent"}
    assert sink.stats()["faults_served"] == 2
    assert sink.stats()["messages"] == 10


async def test_throttling_waits_as_told_and_slows_the_rate(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    limiter = RateLimiter(100_000)
    sink.inject_fault(429, count=2, retry_after_s=0.01)
    outcomes, _ = await send(provider(sink, session, limiter=limiter), outbox(5))
    assert {o.status for o in outcomes} == {"sent"}
    assert limiter.factor < 0.5
    assert sink.stats()["messages"] == 5


async def test_giving_up_fails_the_recipients_with_the_last_error(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    sink.inject_fault(503, count=10)
    outcomes, _ = await send(provider(sink, session), outbox(3))
    assert {o.status for o in outcomes} == {"failed"}
    assert "gave up after 3 attempts" in (outcomes[0].error or "")
    assert "injected fault 503" in (outcomes[0].error or "")
    assert sink.stats()["messages"] == 0


async def test_a_rejected_payload_fails_its_recipients_with_sendgrids_message(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    box = outbox(2)
    assert box.templated is not None
    # A body SendGrid refuses: an empty HTML part.
    box.templated = type(box.templated)(
        box.templated.subject, "", box.templated.text, box.templated.recipients
    )
    outcomes, _ = await send(provider(sink, session), box)
    assert {o.status for o in outcomes} == {"failed"}
    assert outcomes[0].error is not None and outcomes[0].error.startswith("400: content.1.value")
    assert sink.stats()["rejected_requests"] == 1  # a 4xx is not retried


async def test_sink_http_interface(sink: SinkHandle, session: aiohttp.ClientSession) -> None:
    campaign = uuid.uuid4()
    await send(provider(sink, session), outbox(3, campaign=campaign))
    async with session.get(f"{sink.url}/sink/messages", params={"limit": "2"}) as r:
        recent = await r.json()
    assert len(recent) == 2 and recent[0]["email"] == "user2@example.com"
    async with session.get(f"{sink.url}/sink/stats") as r:
        assert (await r.json())["unique_recipients"] == 3
    async with session.post(f"{sink.url}/sink/faults", json={"status": 500, "count": 1}) as r:
        assert r.status == 201
    async with session.post(f"{sink.url}/v3/mail/send", data=b"{}") as r:
        assert r.status == 401  # no API key
    async with session.post(
        f"{sink.url}/v3/mail/send", data=b"{}", headers={"Authorization": "Bearer k"}
    ) as r:
        assert r.status == 500 and (await r.json())["errors"][0]["message"]
    async with session.post(
        f"{sink.url}/v3/mail/send", data=b"{}", headers={"Authorization": "Bearer k"}
    ) as r:
        assert r.status == 400
        assert (await r.json())["errors"][0]["field"] == "personalizations"
