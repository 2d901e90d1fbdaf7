"""Helpers for the console tests: sign in over HTTP in process, read CSRF tokens."""

from __future__ import annotations

import re

import httpx

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]*)"')

ADMIN_EMAIL = "admin@example.com"
PASSWORD = "correct horse battery staple"


def csrf_in(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    page = await client.get("/console/login")
    return await client.post(
        "/console/login",
        data={"email": email, "password": password, "csrf_token": csrf_in(page.text)},
    )


async def page_csrf(client: httpx.AsyncClient, path: str = "/console/campaigns") -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    return csrf_in(page.text)
