"""HTML responses carry security headers, on the edge and on the admin API (issue 12,
item 10); every response carries nosniff and a referrer policy."""

from __future__ import annotations

import uuid

import httpx

from libs.common.settings import Settings
from libs.common.unsubscribe import make_token
from services.api.tests.support import Api
from services.edge.tests.support import running_edge

HTML_HEADERS = (
    "content-security-policy",
    "x-frame-options",
    "referrer-policy",
    "x-content-type-options",
)


def _assert_html_protected(answer: httpx.Response) -> None:
    assert answer.headers["content-type"].startswith("text/html"), answer.headers
    missing = [name for name in HTML_HEADERS if name not in answer.headers]
    assert not missing, f"{answer.request.url.path} lacks {missing}"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


async def test_edge_pages_carry_security_headers(settings: Settings) -> None:
    token = make_token(settings.secret_key, uuid.uuid4(), 1)
    async with running_edge(settings) as edge:
        page = await edge.client.get(f"/u/{token}")
        done = await edge.client.post(f"/u/{token}")
        problem = await edge.client.get("/u/forged")
    for answer in (page, done):
        assert answer.status_code == 200
        _assert_html_protected(answer)
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script at all
    assert problem.status_code == 404
    assert problem.headers["x-content-type-options"] == "nosniff"


async def test_admin_api_pages_carry_security_headers(api: Api) -> None:
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    _assert_html_protected(docs)
    data = await api.client.get("/api/v1/lists", headers=api.auth("viewer"))
    assert data.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in data.headers  # JSON needs none


async def test_console_pages_may_run_their_own_scripts_only(api: Api) -> None:
    """The console's vendored htmx and upload script load from this origin (a policy
    without `script-src 'self'` left it without them: imports never started)."""
    login = await api.client.get("/console/login")
    assert login.status_code == 200
    _assert_html_protected(login)
    policy = login.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy.split("style-src")[0]
    assert "connect-src 'self'" in policy  # server-sent events and htmx requests
