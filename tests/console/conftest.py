"""Fixtures for the console: an in-process app for HTTP-level cases, users of each role."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from libs.common.settings import Settings
from services.api.app import create_app
from services.api.console import passwords, users_repo
from services.api.tests.support import running
from tests.console.support import ADMIN_EMAIL, PASSWORD


@dataclass
class Console:
    app: FastAPI
    settings: Settings

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://console.test"
        )


@pytest.fixture(scope="session")
def console_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "bootstrap_api_key": f"mf_console_{uuid.uuid4().hex}",
            "admin_email": ADMIN_EMAIL,
            "admin_password": PASSWORD,
            "console_idle_timeout_seconds": 600,
            "console_absolute_timeout_seconds": 3600,
        }
    )


@pytest.fixture(scope="session")
async def console(console_settings: Settings) -> AsyncIterator[Console]:
    app = create_app(console_settings)
    async with running(app):
        pool = app.state.resources.db
        hashed = await asyncio.to_thread(passwords.hash_password, PASSWORD)
        for role in ("editor", "viewer"):
            await users_repo.insert_user(pool, f"{role}@example.com", hashed, role)
        yield Console(app, console_settings)
