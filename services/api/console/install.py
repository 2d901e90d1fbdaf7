"""Mounting the console into the API app: state, static files, pages, `/` → `/console`."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from functools import cache
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from libs.common.settings import Settings
from services.api.console import (
    live,
    routes_auth,
    routes_campaigns,
    routes_library,
    routes_lists,
    routes_settings,
)
from services.api.console.auth import ConsoleState, derive_secret
from services.api.console.sessions import Timeouts
from services.api.console.web import make_templates
from services.api.ratelimit import FailureLimiter

STATIC_DIR = Path(__file__).parent / "static"
# Every static URL carries a hash of the file's content (`?v=`), so a browser may keep
# each one for a year: a changed file gets a new URL.
CACHE_CONTROL = "public, max-age=31536000, immutable"
LOGIN_FAILURES_PER_15_MIN = 10


class CachedStatic(StaticFiles):
    async def get_response(self, path: str, scope: Scope):  # type: ignore[no-untyped-def]
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = CACHE_CONTROL
        return response


@cache
def static_url(name: str) -> str:
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return f"/console/static/{name}?v={digest}"


def install_console(app: FastAPI, settings: Settings) -> None:
    templates = make_templates()
    templates.env.globals["static_url"] = static_url
    app.state.console = ConsoleState(
        secret=derive_secret(settings.secret_key),
        timeouts=Timeouts(
            idle=timedelta(seconds=settings.console_idle_timeout_seconds),
            absolute=timedelta(seconds=settings.console_absolute_timeout_seconds),
        ),
        login_failures=FailureLimiter(LOGIN_FAILURES_PER_15_MIN, 15 * 60.0),
        templates=templates,
        default_timezone=settings.default_timezone,
    )
    app.mount("/console/static", CachedStatic(directory=STATIC_DIR), name="console-static")
    pages = (routes_auth, routes_campaigns, live, routes_lists, routes_library, routes_settings)
    for module in pages:
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console", status_code=307)
