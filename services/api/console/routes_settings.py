"""Settings: the person's own time zone; for admins, users and API keys."""

from __future__ import annotations

import asyncio
from typing import Annotated
from uuid import UUID
from zoneinfo import available_timezones

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from libs.common.logging import get_logger
from services.api import repository
from services.api.audit import Target, record_audit
from services.api.console import passwords, users_repo
from services.api.console.auth import AdminPost, AdminView, Session, Viewer, writer
from services.api.console.forms import field_errors_from_validation
from services.api.console.provider_status import provider_statuses
from services.api.console.web import ConsoleRoute, render
from services.api.keys import Role
from services.api.repository import Row
from services.api.routes import api_keys
from services.api.schemas import ApiKeyCreate

log = get_logger(__name__)
router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

ZONES = sorted(available_timezones())
ROLES = [r.value for r in Role]
Short = Annotated[str, Form(max_length=1024)]
AnyonePost = Annotated[Session, writer(Role.VIEWER)]


async def _settings_page(
    request: Request, session: Session, status_code: int = 200, **extra: object
) -> Response:
    providers = await provider_statuses(request.app.state.resources.db)
    return render(
        request, "settings.html", session, status_code, zones=ZONES, providers=providers, **extra
    )


@router.get("/settings")
async def settings_page(request: Request, session: Viewer) -> Response:
    return await _settings_page(request, session)


@router.post("/settings/timezone")
async def set_timezone(request: Request, session: AnyonePost, timezone: Short = "") -> Response:
    if timezone and timezone not in ZONES:
        return await _settings_page(request, session, 422, error="Unknown time zone.")
    await users_repo.set_timezone(request.app.state.resources.db, session.user_id, timezone or None)
    return RedirectResponse("/console/settings", status_code=303)


async def _admin_page(
    request: Request, session: Session, status_code: int = 200, **extra: object
) -> Response:
    db = request.app.state.resources.db
    keys, _ = await repository.page_keys(db, None, 200)
    extra.setdefault("values", {})
    extra.setdefault("errors", {})
    return render(
        request,
        "users.html",
        session,
        status_code,
        users=await users_repo.list_users(db),
        keys=keys,
        roles=ROLES,
        **extra,
    )


@router.get("/settings/users")
async def users_page(request: Request, session: AdminView) -> Response:
    return await _admin_page(request, session)


async def _insert_user_audited(
    request: Request, session: Session, email: str, hashed: str, role: str
) -> Row | None:
    """The user and its audit record commit together; None when the email is taken."""
    async with request.app.state.resources.db.acquire() as conn, conn.transaction():
        row = await users_repo.insert_user(conn, email, hashed, role)
        if row is not None:
            target = Target("console_user", str(row["id"]))
            details = {"email": email, "role": role}
            await record_audit(conn, session.actor, "console_user.create", target, details)
        return row


@router.post("/settings/users")
async def create_user(
    request: Request, session: AdminPost, email: Short = "", password: Short = "", role: Short = ""
) -> Response:
    errors: dict[str, str] = {}
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        errors["email"] = "An email address, like name@example.com."
    try:
        passwords.check_strength(password)
    except passwords.WeakPassword as exc:
        errors["password"] = f"The password needs {exc}."
    if role not in ROLES:
        errors["role"] = "Choose a role."
    if not errors:
        hashed = await asyncio.to_thread(passwords.hash_password, password)
        row = await _insert_user_audited(request, session, email, hashed, role)
        if row is None:
            errors["email"] = "A user with this email exists already."
        else:
            log.info("console user created", user_id=str(row["id"]), role=role)
            return RedirectResponse("/console/settings/users", status_code=303)
    values = {"email": email, "role": role}
    return await _admin_page(request, session, 422, values=values, errors=errors)


@router.post("/settings/users/{user_id}/disable")
async def disable_user(request: Request, session: AdminPost, user_id: UUID) -> Response:
    if user_id == session.user_id:
        return await _admin_page(request, session, 409, notice="You cannot disable yourself.")
    async with request.app.state.resources.db.acquire() as conn, conn.transaction():
        if await users_repo.disable_user(conn, user_id):
            target = Target("console_user", str(user_id))
            await record_audit(conn, session.actor, "console_user.disable", target)
    log.info("console user disabled", user_id=str(user_id))
    return RedirectResponse("/console/settings/users", status_code=303)


@router.post("/settings/keys")
async def create_key(
    request: Request, session: AdminPost, name: Short = "", role: Short = ""
) -> Response:
    try:
        body = ApiKeyCreate.model_validate({"name": name.strip(), "role": role})
    except ValidationError as exc:
        errors = field_errors_from_validation(exc)
        return await _admin_page(
            request, session, 422, key_values={"name": name, "role": role}, key_errors=errors
        )
    created = await api_keys.create_key(body, request.app.state.resources, session.as_caller())
    # Shown once: the page answers with the key and it is never retrievable again.
    return await _admin_page(request, session, new_key=created.key, new_key_name=created.name)


@router.post("/settings/keys/{key_id}/revoke")
async def revoke_key(request: Request, session: AdminPost, key_id: UUID) -> Response:
    await api_keys.revoke_key(key_id, request.app.state.resources, session.as_caller())
    return RedirectResponse("/console/settings/users", status_code=303)
