"""Own open and click tracking end to end (issue 14 item 1), every service its own process:
a campaign goes out through the sink, readers (and Apple's proxy) load the pixel and follow
links from the mail as sent, and the campaign's stats show them, once each, with machine
opens out of the unique rate; the unsubscribe link and the text part are untouched, and a
campaign with tracking off goes out as written."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from libs.common.settings import Settings
from libs.mail.sink import SinkMessage
from tests.e2e.harness import ApiClient, RunningStack, start_stack

READERS = 10
HTML = (
    "<html><body><p>Hi {{ first_name }}</p>"
    '<a href="https://shop.example.org/sale?a=1&amp;b=2">sale</a> '
    '<a href="https://blog.example.org/">blog</a> '
    '<a href="mailto:help@example.org">help</a>'
    "</body></html>"
)
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131"


async def _campaign(api: ApiClient, name: str, **fields: Any) -> str:
    list_id = await api.create_list(name)
    rows = "".join(f"r{i}.{uuid.uuid4().hex[:6]}@example.com,R{i}\n" for i in range(READERS))
    job = await api.wait_import(await api.import_csv(list_id, f"email,first_name\n{rows}".encode()))
    assert job["status"] == "completed", job
    campaign_id = await api.create_campaign(
        name=name,
        subject="Hello",
        html=HTML,
        from_email="news@example.com",
        list_id=list_id,
        **fields,
    )
    await api.schedule(campaign_id)
    done = await api.wait_campaign(campaign_id)
    assert done["status"] == "completed" and done["stats"]["sent"] == READERS, done
    return campaign_id


def _mail_of(stack: RunningStack, campaign_id: str) -> list[SinkMessage]:
    mail = [m for m in stack.sink.messages if m.custom_args.get("campaign_id") == campaign_id]
    assert len(mail) == READERS
    return sorted(mail, key=lambda m: int(m.custom_args["recipient_id"]))


async def _wait_stats(api: ApiClient, campaign_id: str, **expected: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        stats = (await api.campaign(campaign_id))["stats"]
        if all(stats[k] == v for k, v in expected.items()):
            return dict(stats)
        if time.monotonic() > deadline:
            raise AssertionError(f"stats never showed {expected}: {stats}")
        await asyncio.sleep(0.2)


@pytest.mark.timeout(300)
async def test_opens_and_clicks_from_the_mail_as_sent(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stack = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("tracking-e2e-logs"),
        # Readers here click at once: no click is taken for a scanner's (the edge's tests
        # cover that rule).
        env={"MAILFLEET_TRACKING_SCANNER_SECONDS": "0"},
    )
    api = stack.client()
    try:
        tracked = await _campaign(api, "tracked")
        untracked = await _campaign(api, "untracked", tracking=False)
        base = re.escape(stack.edge_url)
        pixel = re.compile(rf'src="({base}/o/[^"]+)"')
        link = re.compile(rf'href="({base}/c/[^"]+)"')
        mail = _mail_of(stack, tracked)
        # Sent through the throttled path (the default domain throttles): SendGrid's own
        # tracking is switched off, else it would count every open and click again.
        assert not any(m.request.provider_tracking for m in mail)
        async with httpx.AsyncClient(timeout=30) as http:
            for n, message in enumerate(mail):
                (src,) = pixel.findall(message.html)
                clicks = link.findall(message.html)
                assert len(clicks) == 2
                assert 'href="mailto:help@example.org"' in message.html
                # The visible unsubscribe link is the signed /u/ link, not a redirect.
                assert re.search(rf'href="{base}/u/[^"]+"', message.html)
                assert "https://shop.example.org/sale?a=1&b=2" in message.text
                if n < 6:  # six readers open, the first one twice
                    for _ in range(2 if n == 0 else 1):
                        answer = await http.get(src, headers={"user-agent": BROWSER})
                        assert answer.status_code == 200
                        assert answer.headers["content-type"] == "image/gif"
                elif n < 8:  # two only through Apple's privacy proxy
                    answer = await http.get(src, headers={"user-agent": "Mozilla/5.0"})
                    assert answer.status_code == 200
                if n < 3:  # three click the sale
                    answer = await http.get(clicks[0], headers={"user-agent": BROWSER})
                    assert answer.status_code == 302
                    assert answer.headers["location"] == "https://shop.example.org/sale?a=1&b=2"
            forged = clicks[0].rsplit("/", 1)[0] + "/" + "A" * 32
            assert (await http.get(forged)).status_code == 404
        stats = await _wait_stats(
            api, tracked, opened=6, opens=9, machine_opens=2, clicked=3, clicks=3
        )
        assert stats["unique_open_rate"] == 0.6 and stats["unique_click_rate"] == 0.3

        for message in _mail_of(stack, untracked):
            assert "/o/" not in message.html and "/c/" not in message.html
            assert 'href="https://shop.example.org/sale?a=1&amp;b=2"' in message.html
    finally:
        await api.close()
        await stack.stop()
