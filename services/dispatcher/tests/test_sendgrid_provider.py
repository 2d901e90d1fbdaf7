"""The SendGrid client against the local sink: acceptance, retries, 429, 4xx, timeouts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from libs.common.events import BatchRecipient, RecipientOutcome
from libs.mail.headers import HeaderPolicy
from libs.mail.messages import Outbox
from libs.mail.providers.base import ProviderOutage
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


async def test_answers_that_prove_nothing_was_sent_are_retried(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    sink.inject_fault(500, count=1)
    sink.inject_fault(503, count=1)
    outcomes, _ = await send(provider(sink, session), outbox(10))
    assert {o.status for o in outcomes} == {"sent"}
    assert sink.stats()["faults_served"] == 2
    assert sink.stats()["messages"] == 10 and sink.stats()["duplicates"] == 0


async def test_a_refused_connection_is_retried_then_fails(
    session: aiohttp.ClientSession,
) -> None:
    closed = await start_sink("127.0.0.1", 0)
    await closed.stop()  # nothing listens on its port any more
    outcomes, _ = await send(provider(closed, session), outbox(2))
    assert {o.status for o in outcomes} == {"failed"}
    assert "gave up after 3 attempts" in (outcomes[0].error or "")


async def test_an_answer_held_past_the_client_timeout_is_unknown_and_never_resent(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    # The sink accepts the request, then answers only after the client gave up waiting.
    sink.inject_fault(202, count=1, delay_s=2.0)
    outcomes, _ = await send(provider(sink, session, timeout_s=0.3), outbox(10))
    assert {o.status for o in outcomes} == {"unknown"}
    assert "may or may not have accepted" in (outcomes[0].error or "")
    assert sink.stats()["requests"] == 1
    assert sink.stats()["messages"] == 10 and sink.stats()["duplicates"] == 0


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateway_error_is_ambiguous(
    sink: SinkHandle, session: aiohttp.ClientSession, status: int
) -> None:
    sink.inject_fault(status, count=1)
    outcomes, _ = await send(provider(sink, session), outbox(3))
    assert {o.status for o in outcomes} == {"unknown"}
    assert sink.stats()["requests"] == 1


async def test_at_least_once_sends_an_ambiguous_request_again(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    sink.inject_fault(202, count=1, delay_s=2.0)
    p = provider(sink, session, timeout_s=0.3, retry_ambiguous=True)
    outcomes, _ = await send(p, outbox(4))
    assert {o.status for o in outcomes} == {"sent"}
    assert sink.stats()["duplicates"] == 4  # the price of at-least-once


@pytest.mark.parametrize("status", [401, 403, 413])
async def test_an_account_refusal_is_an_outage_not_a_recipient_failure(
    sink: SinkHandle, session: aiohttp.ClientSession, status: int
) -> None:
    sink.inject_fault(status, count=100)
    p = provider(sink, session)
    with pytest.raises(ProviderOutage) as raised:
        await send(p, outbox(2100))
    assert raised.value.reason.startswith(f"{status}: injected fault")
    assert raised.value.settled == []
    assert not p.breaker.allows() and p.breaker.outage_reason == raised.value.reason
    assert sink.stats()["requests"] <= 3  # never retried
    assert sink.stats()["messages"] == 0


async def test_a_failing_request_leaves_no_sibling_request_running(
    sink: SinkHandle, session: aiohttp.ClientSession
) -> None:
    # Three requests; the first answered makes its progress callback raise, the other two
    # are still held by the sink.
    sink.inject_fault(202, count=1)
    sink.inject_fault(202, count=2, delay_s=2.0)

    async def explode(outcomes: list[RecipientOutcome]) -> None:
        raise RuntimeError("ledger write failed")

    with pytest.raises(RuntimeError):
        await provider(sink, session).send(outbox(2100), explode)
    orphans = [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_coro().__qualname__.endswith(".one")  # type: ignore[union-attr]
    ]
    assert orphans == []


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
