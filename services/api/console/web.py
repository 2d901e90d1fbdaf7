"""Rendering for the console: templates, filters, and the friendly error pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from libs.common.logging import get_logger
from libs.web.problems import ProblemError
from services.api.console import sessions
from services.api.console.auth import Forbidden, Session, SignInNeeded, console_state
from services.api.keys import Role
from services.api.pagination import BadCursor

log = get_logger(__name__)

HERE = Path(__file__).parent
STATUS_LABELS = {
    "draft": "Draft",
    "scheduled": "Scheduled",
    "in_progress": "In Progress",
    "paused": "Paused",
    "completed": "Completed",
    "failed": "Failed",
    "cancelled": "Cancelled",
}
HEALTH_LABELS = {"green": "Healthy", "yellow": "Degraded", "red": "Poor", None: "No data yet"}


T = TypeVar("T")


async def page_or_first(fetch: Callable[[str | None], Awaitable[T]], cursor: str | None) -> T:
    """A keyset page; a stale or edited cursor in a link shows the first page, not an error."""
    try:
        return await fetch(cursor)
    except BadCursor:
        return await fetch(None)


def local_time(value: datetime | None, timezone: str) -> str:
    if value is None:
        return "—"
    return value.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S %Z")


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["local_time"] = local_time
    env.globals["STATUS_LABELS"] = STATUS_LABELS
    env.globals["HEALTH_LABELS"] = HEALTH_LABELS
    return templates


def render(
    request: Request,
    template: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    state = console_state(request)
    csrf = sessions.csrf_token(state.secret, session.token) if session else ""
    response = state.templates.TemplateResponse(
        request,
        template,
        {
            "session": session,
            "can_edit": bool(session and session.may(Role.EDITOR)),
            "is_admin": bool(session and session.may(Role.ADMIN)),
            "csrf": csrf,
            "timezone": session.timezone if session else state.default_timezone,
            "request_id": getattr(request.state, "request_id", ""),
            **context,
        },
        status_code=status_code,
    )
    # Pages carry a CSRF token and personal data: never kept by a cache or a shared proxy.
    response.headers["Cache-Control"] = "no-store"
    return response


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _sign_in_redirect(request: Request, reason: str | None) -> Response:
    target = "/console/login"
    query = []
    if request.method == "GET" and not _is_htmx(request):
        query.append("next=" + quote(request.url.path))
    if reason:
        query.append("expired=1")
    if query:
        target += "?" + "&".join(query)
    if _is_htmx(request):  # a fragment request: make the whole page go to sign-in
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def error_page(request: Request, status_code: int, message: str) -> Response:
    return render(request, "error.html", None, status_code=status_code, message=message)


class ConsoleRoute(APIRoute):
    """Console answers are pages: sign-in redirects, 403 and error pages with the request
    id instead of problem documents, and never a stack trace."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInNeeded as exc:
                return _sign_in_redirect(request, exc.reason)
            except Forbidden as exc:
                return error_page(request, 403, str(exc))
            except RequestValidationError:
                return error_page(request, 404, "There is no such page.")
            except ProblemError as exc:
                return error_page(request, exc.status, exc.detail)
            except Exception:
                log.exception("console page failed", path=request.url.path)
                return error_page(request, 500, "Something went wrong on our side.")

        return guarded
