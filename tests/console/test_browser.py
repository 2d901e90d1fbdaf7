"""The console in a real browser (Debian chromium + playwright) against the whole system:
a marketer's path from sign-in to a completed campaign, live updates over SSE, role
limits, and axe-core on every screen (no serious or critical violation)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright

from libs.common.embedded import wait_for_port
from libs.common.settings import Settings
from tests.console.browser import SCREENSHOTS, ensure_chromium
from tests.console.support import ADMIN_EMAIL, PASSWORD
from tests.e2e.harness import RunningStack, start_stack

WAIT_MS = 180_000  # generous: the machine is shared
CAMPAIGN_URL = re.compile(r".*/console/campaigns/[0-9a-f-]{36}$")
GOOD_ROWS = 40
CSV = (
    "email,first_name\n"
    + "".join(f"person{i}@example.com,Name{i}\n" for i in range(GOOD_ROWS))
    + "not-an-address,Bad\n=cmd@evil,Formula\n"
).encode()


@pytest.fixture(scope="module")
async def stack(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningStack]:
    running = await start_stack(
        settings.database_url,
        settings.kafka_bootstrap_servers,
        tmp_path_factory.mktemp("console-logs"),
        env={
            "MAILFLEET_ADMIN_EMAIL": ADMIN_EMAIL,
            "MAILFLEET_ADMIN_PASSWORD": PASSWORD,
            # Small batches sent one at a time, so that a campaign takes long enough to
            # watch it move and to pause it (the sink's delays set the pace).
            "MAILFLEET_BATCH_SIZE": "5",
            "MAILFLEET_MAX_BATCHES_IN_FLIGHT": "1",
        },
    )
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = ensure_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable)
        yield launched
        await launched.close()


async def new_page(browser: Browser, width: int = 1280) -> Page:
    context = await browser.new_context(
        viewport={"width": width, "height": 900}, accept_downloads=True
    )
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    return page


async def check_screen(page: Page, name: str) -> None:
    """axe-core finds no serious or critical violation; the screen is saved as a PNG."""
    results = await Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{name}: {bad}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def sign_in(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    await page.goto(base + "/")
    await page.wait_for_url("**/console/login**")
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.click("button:has-text('Sign in')")
    await page.wait_for_url(re.compile(r".*/console$"))


async def mark_page(page: Page) -> None:
    """A marker that a reload would wipe: what changes afterwards came over SSE."""
    await page.evaluate("window.__sameDocument = true")


async def still_same_page(page: Page) -> bool:
    return bool(await page.evaluate("window.__sameDocument === true"))


async def wait_status(page: Page, status: str) -> None:
    await page.wait_for_selector(f"#live [data-status={status}]", timeout=WAIT_MS)


async def create_template(stack: RunningStack) -> None:
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"}
    ) as api:
        answer = await api.post(
            "/api/v1/templates",
            json={
                "name": "Welcome",
                "subject": "Hello {{ first_name }}",
                "html": "<p>Hi {{ first_name }}, welcome.</p>",
                "text": "Hi {{ first_name }}, welcome.",
            },
        )
        assert answer.status_code == 201, answer.text


async def upload_list(page: Page, base: str) -> None:
    await page.goto(base + "/console/lists")
    await check_screen(page, "lists")
    await page.fill("#list-name", "Browser list")
    await page.click("button:has-text('Create list')")
    await page.wait_for_url(re.compile(r".*/console/lists/[0-9a-f-]{36}$"))
    await page.set_input_files(
        "#file", files=[{"name": "people.csv", "mimeType": "text/csv", "buffer": CSV}]
    )
    await page.click("button:has-text('Upload and import')")
    await page.wait_for_selector("[data-import-status=completed]", timeout=WAIT_MS)
    assert await page.text_content("[data-count=imported]") == str(GOOD_ROWS)
    assert await page.text_content("[data-count=rejected]") == "2"
    await check_screen(page, "list-import-done")
    async with page.expect_download() as download_info:
        await page.click("#rejected-link")
    download = await download_info.value
    rejected = Path(await download.path()).read_text(encoding="utf-8-sig")
    assert rejected.startswith("line,reason,email,first_name")
    assert "not-an-address" in rejected and "'=cmd@evil" in rejected  # no live formula


async def create_campaign(page: Page, base: str) -> str:
    await page.goto(base + "/console/campaigns/new")
    await check_screen(page, "campaign-new")
    await page.fill("#name", "Browser campaign")
    await page.fill("#from_email", "news@example.com")
    await page.select_option("#list_id", label="Browser list")
    # The merge-field picker offers the list's columns and types into the HTML editor.
    await page.click("[data-insert='{{ first_name }}']")
    assert await page.input_value("#html") == "{{ first_name }}"
    await page.fill("#html", "")
    await page.select_option("#template_id", label="Welcome")
    await page.click("button:has-text('Create draft')")
    await page.wait_for_url(CAMPAIGN_URL)
    return page.url


async def preview_and_test_send(page: Page) -> None:
    await page.fill("#recipient", "person1@example.com")
    await page.click("button:has-text('Preview')")
    await page.wait_for_selector("text=for person1@example.com")
    srcdoc = await page.get_attribute("iframe.preview", "srcdoc")
    assert srcdoc is not None and "Hi Name1, welcome." in srcdoc
    await page.click("#tab-text")
    assert await page.is_visible("#panel-text")
    assert "Hi Name1, welcome." in (await page.text_content("#panel-text") or "")
    await page.fill("#test-emails", "me@example.com")
    await page.click("button:has-text('Send test')")
    await page.wait_for_selector("[data-test-result=sent]")


async def test_a_marketers_whole_path(browser: Browser, stack: RunningStack) -> None:
    base = stack.api_url
    await create_template(stack)
    page = await new_page(browser)
    await sign_in(page, base, ADMIN_EMAIL)
    await check_screen(page, "dashboard")
    await upload_list(page, base)

    await create_campaign(page, base)
    await preview_and_test_send(page)
    await page.select_option("#sched-timezone", "Asia/Kolkata")
    await page.fill("#day", "2030-03-01")
    await page.fill("#at", "09:00")
    await page.wait_for_selector("text=2030-03-01 03:30 UTC")  # shown before confirming
    await check_screen(page, "campaign-draft")
    await page.fill("#day", "")
    await page.fill("#at", "")
    stack.sink.inject_fault(202, count=3, delay_s=0.5)  # slow enough to see it move
    await page.click("#schedule-button")  # empty date and time: now
    await page.wait_for_url(CAMPAIGN_URL)
    await mark_page(page)
    await wait_status(page, "completed")
    assert await page.get_attribute("#live progress", "value") == "100"
    await page.wait_for_selector("#live [data-health=green]")
    assert await still_same_page(page), "the page was reloaded instead of updated"
    await page.reload()  # the chart draws what the tracker recorded
    await page.wait_for_selector("#rate-chart canvas")
    await check_screen(page, "campaign-detail")

    await pause_and_resume_a_copy(page, stack)

    await page.goto(base + "/console/campaigns?status=completed")
    await page.wait_for_selector("text=Browser campaign")
    await check_screen(page, "campaigns")
    await page.click("nav >> text=Templates")
    await page.click("main >> text=Welcome")
    await page.wait_for_selector("iframe.preview")
    await check_screen(page, "template")
    await page.click("nav >> text=Suppressions")
    await page.fill("#add-email", "gone@example.com")
    await page.click("button:has-text('Suppress')")
    await page.wait_for_selector("td:has-text('gone@example.com')")
    await check_screen(page, "suppressions")
    await page.click("nav >> text=Settings")
    await check_screen(page, "settings")
    await page.click("button:has-text('Sign out')")
    await page.wait_for_url("**/console/login")
    await page.goto(base + "/console/campaigns")
    await page.wait_for_url("**/console/login**")


async def pause_and_resume_a_copy(page: Page, stack: RunningStack) -> None:
    await page.click("button:has-text('Duplicate')")
    await page.wait_for_url(CAMPAIGN_URL)
    stack.sink.inject_fault(202, count=1000, delay_s=1.5)  # 8 batches, one at a time
    await page.click("#schedule-button")
    await page.wait_for_url(CAMPAIGN_URL)
    await wait_status(page, "in_progress")
    await page.click("#controls button:has-text('Pause')")
    await page.wait_for_url(CAMPAIGN_URL)
    await wait_status(page, "paused")
    await check_screen(page, "campaign-paused")
    await page.click("#controls button:has-text('Resume')")
    await page.wait_for_url(CAMPAIGN_URL)
    await mark_page(page)
    await restart_api(stack)  # the open page reconnects its event stream by itself
    stack.sink.state.faults.clear()
    await wait_status(page, "completed")
    assert await page.get_attribute("#live progress", "value") == "100"
    assert await still_same_page(page)


async def restart_api(stack: RunningStack) -> None:
    starts = stack.supervisor.children["api"].starts
    stack.supervisor.kill("api")
    port = int(stack.api_url.rsplit(":", 1)[1])
    deadline = time.monotonic() + WAIT_MS / 1000
    while stack.supervisor.children["api"].starts == starts:
        assert time.monotonic() < deadline, "the API was not restarted"
        await asyncio.sleep(0.1)
    await asyncio.to_thread(wait_for_port, "127.0.0.1", port, WAIT_MS / 1000)


async def test_a_viewer_sees_no_write_control(browser: Browser, stack: RunningStack) -> None:
    base = stack.api_url
    admin = await new_page(browser)
    await sign_in(admin, base, ADMIN_EMAIL)
    await admin.goto(base + "/console/settings/users")
    await check_screen(admin, "users")
    await admin.fill("#new-email", "reader@example.com")
    await admin.fill("#new-password", "short")
    await admin.click("button:has-text('Add user')")
    await admin.wait_for_selector("#password-error")
    assert await admin.input_value("#new-email") == "reader@example.com"  # kept
    await admin.fill("#new-password", PASSWORD)
    await admin.select_option("#new-role", "viewer")
    await admin.click("button:has-text('Add user')")
    await admin.wait_for_selector("td:has-text('reader@example.com')")

    viewer = await new_page(browser, width=390)
    await sign_in(viewer, base, "reader@example.com")
    await check_screen(viewer, "dashboard-390px")
    for path in ("/console/campaigns", "/console/lists"):
        await viewer.goto(base + path)
        forms: list[Any] = await viewer.query_selector_all("main form[method=post]")
        assert forms == [], f"{path} shows a write control to a viewer"
        assert await viewer.evaluate("document.documentElement.scrollWidth <= 390")
        await check_screen(viewer, path.rsplit("/", 1)[-1] + "-390px")
    forged = await viewer.evaluate(
        """async () => {
            const csrf = document.querySelector('input[name=csrf_token]').value;
            const r = await fetch('/console/lists', {method: 'POST',
                body: new URLSearchParams({name: 'forged', csrf_token: csrf})});
            return r.status; }"""
    )
    assert forged == 403
