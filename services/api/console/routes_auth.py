"""Sign in and sign out."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from libs.common.logging import get_logger
from services.api.audit import Target, record_audit
from services.api.console import passwords, sessions, users_repo
from services.api.console.auth import Viewer, console_state, user_actor
from services.api.console.web import ConsoleRoute, render
from services.api.deps import Resources

log = get_logger(__name__)
router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

LoginField = Annotated[str, Form(max_length=1024)]


def _safe_next(target: str | None) -> str:
    """Only a console path: never an open redirect to another site."""
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return "/console"


def _user_target(user_id: UUID) -> Target:
    return Target("console_user", str(user_id))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(
    request: Request,
    status_code: int = 200,
    *,
    error: str | None = None,
    email: str = "",
    next_path: str = "/console",
    expired: bool = False,
) -> Response:
    binding = request.cookies.get(sessions.LOGIN_COOKIE) or sessions.new_token()
    response = render(
        request,
        "login.html",
        None,
        status_code,
        login_csrf=sessions.csrf_token(console_state(request).secret, binding),
        error=error,
        email=email,
        next_path=_safe_next(next_path),
        expired=expired,
    )
    response.set_cookie(
        sessions.LOGIN_COOKIE,
        binding,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/console",
    )
    return response


@router.get("/login")
async def login_form(request: Request, next: str = "/console", expired: int = 0) -> Response:  # noqa: A002
    return _login_page(request, next_path=next, expired=bool(expired))


@router.post("/login")
async def login(
    request: Request,
    resources: Resources,
    email: LoginField,
    password: LoginField,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/console",  # noqa: A002
) -> Response:
    state = console_state(request)
    if not sessions.csrf_ok(state.secret, request.cookies.get(sessions.LOGIN_COOKIE), csrf_token):
        return _login_page(
            request, 403, error="The form expired; please try again.", email=email, next_path=next
        )
    email = email.strip().lower()
    client = request.client.host if request.client else "unknown"
    # Throttled per address and per account: a spray over many accounts and a guess at one
    # account from many addresses are both slowed down.
    waits = [state.login_failures.retry_after(k) for k in (client, "email:" + email)]
    wait = max((w for w in waits if w is not None), default=None)
    if wait is not None:
        message = f"Too many failed sign-ins; try again in {max(1, math.ceil(wait))} s."
        return _login_page(request, 429, error=message, email=email, next_path=next)
    found = await users_repo.find_user_for_login(resources.db, email)
    hashed = found["password_hash"] if found else None
    if not await asyncio.to_thread(passwords.verify_password, hashed, password) or not found:
        for key in (client, "email:" + email):
            state.login_failures.record_failure(key)
        log.info("console sign-in refused")
        return _login_page(
            request, 400, error="Wrong email or password.", email=email, next_path=next
        )
    token = sessions.new_token()
    async with resources.db.acquire() as conn, conn.transaction():
        await users_repo.insert_session(
            conn, sessions.token_hash(token), found["id"], state.clock()
        )
        await record_audit(
            conn,
            user_actor(found["id"], email),
            "console_user.sign_in",
            _user_target(found["id"]),
        )
    log.info("console sign-in", console_user_id=str(found["id"]))
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        sessions.SESSION_COOKIE,
        token,
        max_age=int(state.timeouts.absolute.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
async def logout(request: Request, resources: Resources, session: Viewer) -> Response:
    form = await request.form()
    token = form.get(sessions.CSRF_FIELD) or request.headers.get(sessions.CSRF_HEADER)
    if not sessions.csrf_ok(
        console_state(request).secret, session.token, token if isinstance(token, str) else None
    ):
        return render(request, "error.html", session, 403, message="The form expired; reload.")
    async with resources.db.acquire() as conn, conn.transaction():
        await users_repo.delete_session(conn, sessions.token_hash(session.token))
        await record_audit(
            conn, session.actor, "console_user.sign_out", _user_target(session.user_id)
        )
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(sessions.SESSION_COOKIE, path="/")
    return response
