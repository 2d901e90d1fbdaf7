"""The console's security rules over HTTP, in process: sign-in, CSRF, roles, sessions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from libs.mail.providers.base import ProviderOutage
from libs.mail.sink import start_sink
from services.api.console import live, queries, sessions
from services.api.console.auth import ConsoleState
from services.dispatcher.provider_status import publish_once
from services.dispatcher.provider_status_store import PostgresStatusStore
from services.dispatcher.tests.test_sendgrid_provider import outbox, send
from services.dispatcher.tests.test_sendgrid_provider import provider as sendgrid_client
from tests.console.conftest import Console
from tests.console.support import ADMIN_EMAIL, PASSWORD, csrf_in, page_csrf, sign_in


async def test_root_redirects_to_console_and_pages_need_sign_in(console: Console) -> None:
    async with console.client() as client:
        root = await client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/console"
        page = await client.get("/console/campaigns")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/console/login")


async def test_sign_in_sets_a_strict_cookie_and_sign_out_ends_the_session(
    console: Console,
) -> None:
    async with console.client() as client:
        answer = await sign_in(client, ADMIN_EMAIL)
        assert answer.status_code == 303, answer.text
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie
        token = client.cookies[sessions.SESSION_COOKIE]
        assert (await client.get("/console/campaigns")).status_code == 200
        csrf = await page_csrf(client)
        out = await client.post("/console/logout", data={"csrf_token": csrf})
        assert out.status_code == 303
        client.cookies.set(sessions.SESSION_COOKIE, token)  # replaying the old cookie
        assert (await client.get("/console/campaigns")).status_code == 303


async def test_secure_cookie_over_https(console: Console) -> None:
    async with console.client() as client:
        client.base_url = "https://console.test"
        answer = await sign_in(client, ADMIN_EMAIL)
        assert "Secure" in answer.headers["set-cookie"]


async def test_wrong_password_keeps_the_email_and_logins_are_throttled(console: Console) -> None:
    state: ConsoleState = console.app.state.console
    async with console.client() as client:
        wrong = await sign_in(client, "throttle@example.com", "not the password")
        assert wrong.status_code == 400
        assert 'value="throttle@example.com"' in wrong.text
        for _ in range(state.login_failures.limit):
            last = await sign_in(client, "throttle@example.com", "not the password")
        assert last.status_code == 429
        assert "Too many failed sign-ins" in last.text
    state.login_failures._failures.clear()  # the other tests sign in from the same address


async def test_a_post_without_csrf_token_is_refused(console: Console) -> None:
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        refused = await client.post("/console/lists", data={"name": "no token"})
        assert refused.status_code == 403
        forged = await client.post("/console/lists", data={"name": "x", "csrf_token": "0" * 64})
        assert forged.status_code == 403
        csrf = await page_csrf(client)
        made = await client.post("/console/lists", data={"name": "with token", "csrf_token": csrf})
        assert made.status_code == 303


async def test_login_form_needs_its_csrf_token(console: Console) -> None:
    async with console.client() as client:
        answer = await client.post(
            "/console/login", data={"email": ADMIN_EMAIL, "password": PASSWORD}
        )
        assert answer.status_code == 403
        assert sessions.SESSION_COOKIE not in client.cookies


async def test_viewer_sees_no_write_control_and_a_forged_post_gets_403(console: Console) -> None:
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        lists_page = await client.get("/console/lists")
        assert "Create list" not in lists_page.text
        campaigns_page = await client.get("/console/campaigns")
        assert "New campaign" not in campaigns_page.text
        csrf = csrf_in(campaigns_page.text)  # the viewer's own, valid token
        forged = await client.post("/console/lists", data={"name": "viewer", "csrf_token": csrf})
        assert forged.status_code == 403
        admin_only = await client.get("/console/settings/users")
        assert admin_only.status_code == 403


async def test_a_tampered_session_cookie_is_refused(console: Console) -> None:
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        token = client.cookies[sessions.SESSION_COOKIE]
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        client.cookies.set(sessions.SESSION_COOKIE, flipped)
        assert (await client.get("/console/campaigns")).status_code == 303


async def test_sessions_expire_when_idle_and_after_the_absolute_limit(console: Console) -> None:
    state: ConsoleState = console.app.state.console
    now = datetime.now(UTC)
    state.clock = lambda: now
    try:
        async with console.client() as client:
            await sign_in(client, ADMIN_EMAIL)
            # Active every 9 minutes (idle limit 10): still signed in after 54 minutes.
            for step in range(1, 7):
                moment = now + timedelta(minutes=9 * step)
                state.clock = lambda moment=moment: moment
                assert (await client.get("/console/campaigns")).status_code == 200
            # Past the absolute limit of an hour, however active.
            state.clock = lambda: now + timedelta(minutes=61)
            expired = await client.get("/console/campaigns")
            assert expired.status_code == 303 and "expired=1" in expired.headers["location"]

            state.clock = lambda: now
            await sign_in(client, ADMIN_EMAIL)
            state.clock = lambda: now + timedelta(minutes=11)  # idle too long
            idle = await client.get("/console/campaigns")
            assert idle.status_code == 303 and "expired=1" in idle.headers["location"]
    finally:
        state.clock = lambda: datetime.now(UTC)


async def test_static_assets_are_served_with_cache_headers(console: Console) -> None:
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        page = await client.get("/console/campaigns")
        for name in ("htmx-2.0.11.min.js", "htmx-ext-sse-2.2.4.min.js", "console.css"):
            assert name in page.text
        assert page.headers["cache-control"] == "no-store"
        asset = await client.get("/console/static/vendor/htmx-2.0.11.min.js")
        assert asset.status_code == 200
        assert "immutable" in asset.headers["cache-control"]


def _campaign_form(csrf: str, list_id: str, **fields: str) -> dict[str, str]:
    """The new-campaign form as a person fills it in; `fields` change some of it."""
    form = {
        "csrf_token": csrf,
        "name": "A campaign",
        "from_email": "news@example.com",
        "list_id": list_id,
        "subject": "Hi",
        "html": "<p>Hi</p>",
    }
    return form | fields


async def test_wrong_campaign_input_is_shown_next_to_its_field(console: Console) -> None:
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        csrf = await page_csrf(client)
        await client.post("/console/lists", data={"name": "for campaigns", "csrf_token": csrf})
        form = await client.get("/console/campaigns/new")
        list_id = form.text.split('<option value="', 2)[2].split('"', 1)[0]
        answer = await client.post(
            "/console/campaigns/new",
            data=_campaign_form(
                csrf, list_id, name="Broken", html="<p>line one</p>\n<p>{{ unclosed </p>"
            ),
        )
        assert answer.status_code == 422
        assert 'id="html-error"' in answer.text and "line 2" in answer.text
        assert "line one" in answer.text  # what the person typed is kept
        assert 'value="Broken"' in answer.text


async def test_an_unknown_page_is_a_friendly_page_with_the_request_id(console: Console) -> None:
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        answer = await client.get("/console/campaigns/not-a-uuid")
        assert answer.status_code == 404
        assert "Request id" in answer.text and "Traceback" not in answer.text


async def _campaign_with_log(console: Console) -> tuple[str, str]:
    """A list of three and a campaign whose log the tracker would have written."""
    db = console.app.state.resources.db
    list_id = await db.fetchval("INSERT INTO lists (name) VALUES ('log list') RETURNING id")
    ids = [
        await db.fetchval(
            "INSERT INTO recipients (list_id, email, fields) VALUES ($1, $2, $3) RETURNING id",
            list_id,
            f"log{i}@example.com",
            {"first_name": "Ann", "city": "Oslo"},
        )
        for i in range(3)
    ]
    campaign_id = await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider, status)"
        " VALUES ('logged', 'Hi', '<p>Hi</p>', 'a@example.com', $1, 'sink', 'completed')"
        " RETURNING id",
        list_id,
    )
    for n, recipient_id in enumerate(ids):
        await db.execute(
            "INSERT INTO deliveries (campaign_id, recipient_id, email, status, batch_id, error)"
            " VALUES ($1, $2, $3, $4, 'b1', $5)",
            campaign_id,
            recipient_id,
            f"log{n}@example.com",
            "failed" if n == 2 else "sent",
            "=HYPERLINK(1)" if n == 2 else None,
        )
    return str(list_id), str(campaign_id)


async def test_delivery_log_search_and_csv_export(console: Console) -> None:
    list_id, campaign_id = await _campaign_with_log(console)
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        found = await client.get(
            f"/console/campaigns/{campaign_id}", params={"address": "LOG1@example.com"}
        )
        assert "log1@example.com" in found.text and "log0@example.com" not in found.text
        export = await client.get(
            f"/console/campaigns/{campaign_id}/deliveries.csv",
            params={"delivery_status": "failed"},
        )
        assert export.status_code == 200
        lines = export.text.lstrip("\ufeff").splitlines()
        assert lines[0].startswith("recipient_id,email,status")
        assert len(lines) == 2 and "log2@example.com" in lines[1]
        assert "'=HYPERLINK(1)" in lines[1]  # a formula stays text in a spreadsheet
        fields = await client.get("/console/merge-fields", params={"list_id": list_id})
        assert all(f"{{{{ {name} }}}}" in fields.text for name in ("email", "first_name", "city"))


async def test_suppressions_follow_the_role_rules(console: Console) -> None:
    async with console.client() as viewer, console.client() as editor:
        await sign_in(viewer, "viewer@example.com")
        page = await viewer.get("/console/suppressions")
        assert "Suppress an address" not in page.text
        refused = await viewer.post(
            "/console/suppressions",
            data={"email": "nope@example.com", "csrf_token": csrf_in(page.text)},
        )
        assert refused.status_code == 403

        await sign_in(editor, "editor@example.com")
        csrf = await page_csrf(editor, "/console/suppressions")
        bad = await editor.post(
            "/console/suppressions", data={"email": "not an address", "csrf_token": csrf}
        )
        assert bad.status_code == 422 and 'id="email-error"' in bad.text
        assert 'value="not an address"' in bad.text
        added = await editor.post(
            "/console/suppressions", data={"email": "Gone@Example.com", "csrf_token": csrf}
        )
        assert added.status_code == 303
        found = await viewer.get("/console/suppressions", params={"email": "gone@example.com"})
        assert "gone@example.com" in found.text and "manual" in found.text
        removed = await editor.post(
            "/console/suppressions/remove",
            data={"email": "gone@example.com", "csrf_token": csrf},
        )
        assert removed.status_code == 303
        again = await viewer.get("/console/suppressions", params={"email": "gone@example.com"})
        assert "is not suppressed" in again.text


async def test_template_versions_and_preview(console: Console) -> None:
    db = console.app.state.resources.db
    template_id = await db.fetchval(
        "WITH t AS (INSERT INTO templates (name, latest_version) VALUES ('Promo', 2) RETURNING id)"
        " INSERT INTO template_versions (template_id, version, subject, html, text)"
        " SELECT id, v, 'Sale v' || v, '<p>Version ' || v || '</p>', NULL"
        " FROM t, generate_series(1, 2) v RETURNING template_id"
    )
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        latest = await client.get(f"/console/templates/{template_id}")
        assert "Sale v2" in latest.text and "&lt;p&gt;Version 2&lt;/p&gt;" in latest.text
        first = await client.get(f"/console/templates/{template_id}", params={"version": 1})
        assert "Sale v1" in first.text
        assert 'sandbox=""' in first.text


async def test_an_edited_page_link_shows_the_first_page(console: Console) -> None:
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        for path in ("/console/campaigns", "/console/lists", "/console/templates"):
            answer = await client.get(path, params={"cursor": "not-a-cursor"})
            assert answer.status_code == 200, path


async def test_edit_and_remove_a_recipient(console: Console) -> None:
    list_id, _ = await _campaign_with_log(console)
    db = console.app.state.resources.db
    recipient_id = await db.fetchval(
        "SELECT id FROM recipients WHERE list_id = $1 AND email = 'log0@example.com'",
        uuid.UUID(list_id),
    )
    path = f"/console/lists/{list_id}/recipients/{recipient_id}"
    async with console.client() as client:
        await sign_in(client, "editor@example.com")
        csrf = await page_csrf(client, path)
        bad = await client.post(path, data={"csrf_token": csrf, "email": "nonsense"})
        assert bad.status_code == 422 and 'id="email-error"' in bad.text
        saved = await client.post(
            path,
            data={
                "csrf_token": csrf,
                "email": "log0@example.com",
                "field:first_name": "Bea",
                "field:city": "",
                "new_field_name": "plan",
                "new_field_value": "pro",
            },
        )
        assert saved.status_code == 303, saved.text
        fields = await db.fetchval("SELECT fields FROM recipients WHERE id = $1", recipient_id)
        assert fields == {"first_name": "Bea", "plan": "pro"}
        gone = await client.post(path + "/delete", data={"csrf_token": csrf})
        assert gone.status_code == 303
        assert (await client.get(path)).status_code == 404


async def test_edit_a_draft_and_not_a_completed_campaign(console: Console) -> None:
    list_id, completed_id = await _campaign_with_log(console)
    async with console.client() as client:
        await sign_in(client, "editor@example.com")
        csrf = await page_csrf(client)
        fields = {
            "csrf_token": csrf,
            "name": "Draft one",
            "from_email": "news@example.com",
            "list_id": list_id,
            "subject": "Hi {{ first_name }}",
            "html": "<p>Hi</p>",
        }
        created = await client.post("/console/campaigns/new", data=fields)
        assert created.status_code == 303
        edit_path = created.headers["location"] + "/edit"
        form = await client.get(edit_path)
        assert 'value="Draft one"' in form.text and "Save changes" in form.text
        broken = await client.post(edit_path, data={**fields, "html": "{% if %}"})
        assert broken.status_code == 422 and 'id="html-error"' in broken.text
        saved = await client.post(edit_path, data={**fields, "name": "Draft two"})
        assert saved.status_code == 303
        page = await client.get(created.headers["location"])
        assert "Draft two" in page.text
        refused = await client.post(f"/console/campaigns/{completed_id}/edit", data=fields)
        assert refused.status_code == 422
        assert "cannot edit a campaign that is completed" in refused.text


async def test_a_server_error_is_a_friendly_page_with_the_request_id(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(queries, "running_campaigns", broken)
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        answer = await client.get("/console", headers={"x-request-id": "req-123"})
        assert answer.status_code == 500
        assert "req-123" in answer.text and "Something went wrong" in answer.text
        assert "secret internals" not in answer.text and "Traceback" not in answer.text


async def test_an_admin_creates_an_api_key_shown_once_and_revokes_it(console: Console) -> None:
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        csrf = await page_csrf(client, "/console/settings/users")
        created = await client.post(
            "/console/settings/keys",
            data={"name": "from the console", "role": "viewer", "csrf_token": csrf},
        )
        assert created.status_code == 200
        key = created.text.split('id="new-key">', 1)[1].split("<", 1)[0]
        assert key.startswith("mf_")
        works = await client.get("/api/v1/lists", headers={"Authorization": f"Bearer {key}"})
        assert works.status_code == 200
        later = await client.get("/console/settings/users")
        assert key not in later.text and "from the console" in later.text
        forms = later.text.split('action="/console/settings/keys/')[1:]
        revoke = next(f.split('"', 1)[0] for f in forms if "Revoke from the console" in f)
        revoked = await client.post(f"/console/settings/keys/{revoke}", data={"csrf_token": csrf})
        assert revoked.status_code == 303
        refused = await client.get("/api/v1/lists", headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401


async def test_an_open_event_stream_ends_with_its_session(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, campaign_id = await _campaign_with_log(console)
    state: ConsoleState = console.app.state.console
    monkeypatch.setattr(live, "RECHECK_SESSION_S", -1.0)  # re-check before every update
    async with console.client() as client:
        await sign_in(client, ADMIN_EMAIL)
        start = datetime.now(UTC)
        moments = iter([start])  # the connect sees now; every later check, two hours on
        monkeypatch.setattr(state, "clock", lambda: next(moments, start + timedelta(hours=2)))
        # The in-process transport returns only when the stream ends: it must end.
        answer = await asyncio.wait_for(
            client.get(f"/console/campaigns/{campaign_id}/live"), timeout=30
        )
        assert answer.status_code == 200
        assert "event: progress" not in answer.text


async def _audit(console: Console, action: str) -> list[dict[str, object]]:
    async with console.client() as api:
        answer = await api.get(
            "/api/v1/audit",
            params={"action": action, "limit": 200},
            headers={"Authorization": f"Bearer {console.settings.bootstrap_api_key}"},
        )
    assert answer.status_code == 200, answer.text
    items: list[dict[str, object]] = answer.json()["items"]
    return items


async def _user_id(console: Console, email: str) -> str:
    db = console.app.state.resources.db
    return str(await db.fetchval("SELECT id FROM console_users WHERE email = $1", email))


async def test_console_actions_are_audited_as_the_signed_in_user(console: Console) -> None:
    admin_id = await _user_id(console, ADMIN_EMAIL)
    editor_id = await _user_id(console, "editor@example.com")
    list_id, _ = await _campaign_with_log(console)
    new_email = f"audited-{uuid.uuid4().hex[:8]}@example.com"
    async with console.client() as admin, console.client() as editor:
        await sign_in(editor, "editor@example.com")
        csrf = await page_csrf(editor)
        draft = await editor.post(
            "/console/campaigns/new", data=_campaign_form(csrf, list_id, name="Audited")
        )
        assert draft.status_code == 303, draft.text
        campaign_id = draft.headers["location"].rsplit("/", 1)[1]
        scheduled = await editor.post(
            f"/console/campaigns/{campaign_id}/schedule",
            data={"csrf_token": csrf, "day": "2030-03-01", "at": "09:00", "timezone": "UTC"},
        )
        assert scheduled.status_code == 303, scheduled.text
        out = await editor.post("/console/logout", data={"csrf_token": csrf})
        assert out.status_code == 303

        await sign_in(admin, ADMIN_EMAIL)
        admin_csrf = await page_csrf(admin, "/console/settings/users")
        created = await admin.post(
            "/console/settings/users",
            data={
                "csrf_token": admin_csrf,
                "email": new_email,
                "password": PASSWORD,
                "role": "viewer",
            },
        )
        assert created.status_code == 303, created.text
        new_id = await _user_id(console, new_email)
        disabled = await admin.post(
            f"/console/settings/users/{new_id}/disable", data={"csrf_token": admin_csrf}
        )
        assert disabled.status_code == 303, disabled.text

    schedule = [
        e for e in await _audit(console, "campaign.schedule") if e["target_id"] == campaign_id
    ]
    assert len(schedule) == 1
    assert (schedule[0]["actor_kind"], schedule[0]["actor_id"]) == ("user", editor_id)
    assert schedule[0]["actor_name"] == "editor@example.com"
    for action, actor_id, target_id in (
        ("console_user.create", admin_id, new_id),
        ("console_user.disable", admin_id, new_id),
        ("console_user.sign_in", editor_id, editor_id),
        ("console_user.sign_out", editor_id, editor_id),
        ("console_user.sign_in", admin_id, admin_id),
    ):
        # Other tests share the database: their entries by the same person are not ours.
        found = [
            e
            for e in await _audit(console, action)
            if e["actor_id"] == actor_id and e["target_id"] == target_id
        ]
        assert found, (action, actor_id, target_id)
        assert all(e["actor_kind"] == "user" for e in found)


def _row_of(html: str, instance: str) -> str:
    rows = [row for row in html.split("<tr") if instance in row]
    assert len(rows) == 1, (instance, rows)
    return rows[0]


async def test_settings_show_the_provider_status_the_dispatchers_publish(
    console: Console,
) -> None:
    db = console.app.state.resources.db
    sink = await start_sink("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            refused = sendgrid_client(sink, session)
            sink.inject_fault(401, count=100)
            with pytest.raises(ProviderOutage):
                await send(refused, outbox(3))
    finally:
        await sink.stop()
    instance = f"console-test-{uuid.uuid4().hex[:8]}"
    assert await publish_once(PostgresStatusStore(db), instance, {"sink": refused})
    silent = f"console-silent-{uuid.uuid4().hex[:8]}"
    await db.execute(
        "INSERT INTO provider_status (instance, provider, breaker_state, rate_limit_per_s,"
        " updated_at) VALUES ($1, 'smtp', 'closed', 12.5, now() - interval '5 minutes')",
        silent,
    )
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        page = await client.get("/console/settings")
    assert page.status_code == 200
    assert '<th scope="col">Circuit breaker</th>' in page.text
    row = _row_of(page.text, instance)
    assert 'data-breaker="open"' in row and "open: 401: injected fault" in row
    assert "unlimited" in row and "stale" not in row
    old = _row_of(page.text, silent)
    assert 'data-breaker="closed"' in old and "12.5 emails/s" in old
    assert "<strong>stale</strong>" in old and "none" in old


async def test_the_dashboard_follows_every_running_campaign_over_one_stream(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser opens at most six connections to a host: a stream per running campaign
    left a dashboard with six of them unable to open the next page (seen in CI)."""
    db = console.app.state.resources.db
    list_id, _ = await _campaign_with_log(console)
    running = [
        str(
            await db.fetchval(
                "INSERT INTO campaigns (name, subject, html, from_email, list_id, provider,"
                " status, started_at) VALUES ($1, 'Hi', '<p>Hi</p>', 'a@example.com', $2,"
                " 'sink', 'in_progress', now()) RETURNING id",
                f"running {n}",
                uuid.UUID(list_id),
            )
        )
        for n in range(8)
    ]
    checks = iter([True])  # the stream's first session check passes, the next ends it
    monkeypatch.setattr(live, "RECHECK_SESSION_S", -1.0)
    monkeypatch.setattr(live, "UPDATE_EVERY_S", 0.0)

    async def session_valid(*_: object) -> bool:
        return next(checks, False)

    monkeypatch.setattr(live, "_session_valid", session_valid)
    try:
        async with console.client() as client:
            await sign_in(client, ADMIN_EMAIL)
            page = await client.get("/console")
            assert page.status_code == 200
            assert page.text.count("sse-connect=") == 1
            for campaign_id in running:
                assert f'sse-swap="progress-{campaign_id}"' in page.text
            answer = await asyncio.wait_for(client.get("/console/live"), timeout=30)
        assert answer.status_code == 200
        for campaign_id in running:
            assert f"event: progress-{campaign_id}" in answer.text
    finally:
        await db.execute(
            "UPDATE campaigns SET status = 'cancelled' WHERE id = ANY($1::uuid[])",
            [uuid.UUID(c) for c in running],
        )


async def test_scheduling_at_local_time_from_the_console(console: Console) -> None:
    """Issue 17: the schedule form's "each recipient's own zone" box."""
    list_id, _ = await _campaign_with_log(console)
    async with console.client() as editor:
        await sign_in(editor, "editor@example.com")
        csrf = await page_csrf(editor)
        draft = await editor.post(
            "/console/campaigns/new", data=_campaign_form(csrf, list_id, name="Local")
        )
        assert draft.status_code == 303, draft.text
        campaign_id = draft.headers["location"].rsplit("/", 1)[1]
        page = await editor.get(f"/console/campaigns/{campaign_id}")
        assert 'name="local_time"' in page.text
        preview = await editor.get(
            "/console/schedule-preview",
            params={"day": "2030-03-01", "at": "09:00", "timezone": "UTC", "local_time": "true"},
        )
        assert "2030-02-28 19:00 UTC" in preview.text and "own zone" in preview.text
        no_day = await editor.get("/console/schedule-preview", params={"local_time": "true"})
        assert "Give a date and a time" in no_day.text
        too_early = await editor.get(
            "/console/schedule-preview",
            params={"day": "0001-01-01", "at": "00:00", "timezone": "Asia/Kolkata"},
        )
        assert too_early.status_code == 200 and "outside the supported range" in too_early.text
        scheduled = await editor.post(
            f"/console/campaigns/{campaign_id}/schedule",
            data={
                "csrf_token": csrf,
                "day": "2030-03-01",
                "at": "09:00",
                "timezone": "Asia/Kolkata",
                "local_time": "true",
            },
        )
        assert scheduled.status_code == 303, scheduled.text
    row = await console.app.state.resources.db.fetchrow(
        "SELECT status, send_at, timezone, local_time, local_send_at FROM campaigns WHERE id = $1",
        uuid.UUID(campaign_id),
    )
    assert dict(row) == {
        "status": "scheduled",
        "send_at": datetime(2030, 2, 28, 19, 0, tzinfo=UTC),
        "timezone": "Asia/Kolkata",
        "local_time": True,
        "local_send_at": datetime(2030, 3, 1, 9, 0),
    }
    await console.app.state.resources.db.execute(
        "UPDATE campaigns SET status = 'draft' WHERE id = $1", uuid.UUID(campaign_id)
    )


async def test_a_list_page_shows_its_subscription_settings_and_statuses(console: Console) -> None:
    db = console.app.state.resources.db
    list_id = await db.fetchval(
        "INSERT INTO lists (name, opt_in, confirmation_from_email, editable_fields)"
        " VALUES ('Weekly', 'double', 'news@example.com', '{first_name}') RETURNING id"
    )
    await db.execute(
        "INSERT INTO recipients (list_id, email, status) VALUES ($1, 'wait@example.com',"
        " 'unconfirmed')",
        list_id,
    )
    public_id = await db.fetchval("SELECT public_id FROM lists WHERE id = $1", list_id)
    async with console.client() as client:
        await sign_in(client, "viewer@example.com")
        page = await client.get(f"/console/lists/{list_id}")
    assert page.status_code == 200
    assert "Double opt-in" in page.text and f"/s/{public_id}" in page.text
    assert "<td>unconfirmed</td>" in page.text
