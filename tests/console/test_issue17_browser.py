"""The issue-17 settings in the console, in a real browser (Debian chromium + playwright)
against the console served in this process (no whole stack: fast): the rate cap on the
editor and on the campaign page (changed while it sends, refused when out of range), the
local-time schedule with a send window, and the waiting recipients per zone pushed over
SSE as batches go out."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright

from libs.common.settings import Settings
from services.api.app import create_app
from services.api.tests.support import live_server
from services.dispatcher.tests.support import insert_content
from tests.console.browser import ensure_chromium
from tests.console.support import ADMIN_EMAIL, PASSWORD
from tests.console.test_browser import check_screen

WAIT_MS = 30_000
CAMPAIGN_URL = re.compile(r".*/console/campaigns/[0-9a-f-]{36}$")


@pytest.fixture(scope="module")
def console_url(console_settings: Settings) -> Iterator[str]:
    with live_server(create_app(console_settings), "the console") as url:
        yield url


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    executable = ensure_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable)
        yield launched
        await launched.close()


async def signed_in(browser: Browser, base: str) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    await page.goto(base + "/console/login")
    await page.fill("#email", ADMIN_EMAIL)
    await page.fill("#password", PASSWORD)
    await page.click("button:has-text('Sign in')")
    await page.wait_for_url(re.compile(r".*/console$"))
    return page


async def test_rate_cap_local_time_window_and_zones_in_the_console(
    console_url: str, chromium: Browser, pool: asyncpg.Pool
) -> None:
    list_name = f"Zones {uuid.uuid4().hex[:6]}"
    await pool.execute("INSERT INTO lists (name) VALUES ($1)", list_name)
    page = await signed_in(chromium, console_url)
    try:
        await _walk_through(page, console_url, pool, list_name)
    finally:
        # Its event stream closed first: the server then stops at once.
        await page.context.close()


async def _walk_through(page: Page, console_url: str, pool: asyncpg.Pool, list_name: str) -> None:

    # The editor: a cap that is no number is refused next to its field, then one is kept.
    await page.goto(console_url + "/console/campaigns/new")
    await page.fill("#name", "Capped campaign")
    await page.fill("#from_email", "news@example.com")
    await page.select_option("#list_id", label=list_name)
    await page.fill("#subject", "Hello")
    await page.fill("#html", "<p>Hi</p>")
    await page.fill("#max_per_hour", "lots")
    await page.click("button:has-text('Create draft')")
    await page.wait_for_selector("#max_per_hour-error")
    assert await page.input_value("#max_per_hour") == "lots"  # kept as typed
    await page.fill("#max_per_hour", "1,200")
    await page.click("button:has-text('Create draft')")
    await page.wait_for_url(CAMPAIGN_URL)
    campaign_id = uuid.UUID(page.url.rsplit("/", 1)[-1])
    assert await page.get_attribute("[data-cap]", "data-cap") == "1200"
    assert "1,200 recipients an hour" in (await page.text_content("#rate-cap") or "")
    await check_screen(page, "campaign-draft-capped")  # axe-core: the new controls too

    # Schedule at local time with a window: a window ending before it starts is refused.
    await page.fill("#day", "2030-03-01")
    await page.fill("#at", "09:00")
    await page.check("#local-time")
    await page.fill("#window-start", "20:00")
    await page.fill("#window-end", "08:00")
    await page.click("#schedule-button")
    await page.wait_for_selector("text=must be after start")
    await page.go_back()
    await page.wait_for_selector("#schedule-button")
    await page.fill("#day", "2030-03-01")
    await page.fill("#at", "09:00")
    await page.check("#local-time")
    await page.fill("#window-start", "08:00")
    await page.fill("#window-end", "20:00")
    await page.check("#window-mon")
    await page.check("#window-tue")
    await page.click("#schedule-button")
    await page.wait_for_url(CAMPAIGN_URL)
    assert "2030-03-01 09:00" in (await page.text_content("#local-send-at") or "")
    window = await page.text_content("#send-window") or ""
    assert "08:00–20:00" in window and "mon, tue" in window
    row = await pool.fetchrow(
        "SELECT local_time, send_window FROM campaigns WHERE id = $1", campaign_id
    )
    assert row["local_time"] and row["send_window"]["days"] == ["mon", "tue"]

    # It sends (the scheduler's claim and plan, written here): two zones wait, live.
    content = await insert_content(pool, campaign_id)
    now = datetime.now(UTC)
    await pool.execute(
        "INSERT INTO campaign_plans (campaign_id, content_id, provider, audience_total,"
        " suppressed_total, batches_total, invalid_timezones) VALUES ($1, $2, 'sink', 7, 0, 2, 3)",
        campaign_id,
        content,
    )
    await pool.executemany(
        "INSERT INTO batch_plans (batch_id, campaign_id, batch_no, recipient_ids, zone, due_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (f"{campaign_id}:0", campaign_id, 0, [1, 2, 3], "Asia/Tokyo", now + timedelta(hours=1)),
            (f"{campaign_id}:1", campaign_id, 1, [4, 5, 6, 7], "Europe/Paris", now + timedelta(hours=8)),
        ],
    )  # fmt: skip
    await pool.execute(
        "UPDATE campaigns SET status = 'in_progress', started_at = now() WHERE id = $1",
        campaign_id,
    )
    await page.reload()
    await page.evaluate("window.__sameDocument = true")
    await page.wait_for_selector("#live [data-status=in_progress]")
    assert await page.text_content("[data-zone='Asia/Tokyo'] [data-waiting]") == "3"
    assert await page.text_content("[data-zone='Europe/Paris'] [data-waiting]") == "4"
    assert "3 recipients had no valid" in (
        await page.text_content("[data-invalid-timezones]") or ""
    )
    # Tokyo's batch goes out: the table follows over the event stream, without a reload.
    await pool.execute("UPDATE batch_plans SET emitted = 1 WHERE batch_id = $1", f"{campaign_id}:0")
    await page.wait_for_selector("[data-zone='Asia/Tokyo']", state="detached")
    assert await page.is_visible("[data-zone='Europe/Paris']")
    assert await page.evaluate("window.__sameDocument === true")
    await check_screen(page, "campaign-zones-waiting")

    # The cap changes while it sends; 0 is refused next to the field.
    await page.fill("#cap-input", "0")
    await page.click("#cap-button")
    await page.wait_for_selector("#cap-error")
    await page.fill("#cap-input", "600")
    await page.click("#cap-button")
    await page.wait_for_selector("[data-cap-saved]")
    assert await page.get_attribute("[data-cap]", "data-cap") == "600"
    assert await pool.fetchval(
        "SELECT max_per_hour FROM campaigns WHERE id = $1", campaign_id
    ) == 600  # fmt: skip

    # Done: nothing of this campaign is left waiting in the shared database.
    await pool.execute(
        "UPDATE campaigns SET status = 'completed', finished_at = now() WHERE id = $1",
        campaign_id,
    )
    await pool.execute("DELETE FROM batch_plans WHERE campaign_id = $1", campaign_id)
