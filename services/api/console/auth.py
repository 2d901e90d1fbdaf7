"""Who is signed in to the console, and what they may do: FastAPI dependencies."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from libs.common.logging import bind_contextvars
from services.api.audit import Actor
from services.api.console import sessions, users_repo
from services.api.deps import ApiResources, Caller, get_resources
from services.api.keys import Role, role_allows
from services.api.ratelimit import FailureLimiter


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ConsoleState:
    """Set up by `install_console`; tests replace `clock` to expire sessions."""

    secret: bytes
    timeouts: sessions.Timeouts
    login_failures: FailureLimiter
    templates: Jinja2Templates
    default_timezone: str
    clock: Callable[[], datetime] = utc_now


def console_state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


@dataclass(frozen=True)
class Session:
    token: str
    user_id: UUID
    email: str
    role: Role
    timezone: str

    def may(self, role: Role) -> bool:
        return role_allows(self.role, role)

    @property
    def actor(self) -> Actor:
        """The signed-in person in the audit log."""
        return user_actor(self.user_id, self.email)

    def as_caller(self) -> Caller:
        """The caller the REST route functions take: they audit it as this user."""
        return Caller(key_id=self.user_id, name=self.email, role=self.role, kind="user")


def user_actor(user_id: UUID, email: str) -> Actor:
    return Actor("user", str(user_id), email)


class SignInNeeded(Exception):
    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "sign in")
        self.reason = reason


class Forbidden(Exception):
    pass


def derive_secret(secret_key: str) -> bytes:
    """The key behind CSRF tokens: from MAILFLEET_SECRET_KEY, or per process without one."""
    material = secret_key.encode() if secret_key else sessions.new_token().encode()
    return hashlib.sha256(b"mailfleet-console:" + material).digest()


async def current_session(request: Request) -> Session:
    state = console_state(request)
    resources: ApiResources = get_resources(request)
    token = request.cookies.get(sessions.SESSION_COOKIE)
    if not token or len(token) > 200:
        raise SignInNeeded()
    key = sessions.token_hash(token)
    found = await users_repo.find_session(resources.db, key)
    if found is None:  # unknown, tampered with, signed out, or the user was disabled
        raise SignInNeeded()
    now = state.clock()
    if sessions.expired(found["created_at"], found["last_seen_at"], now, state.timeouts):
        await users_repo.delete_session(resources.db, key)
        raise SignInNeeded("Your session expired; please sign in again.")
    if sessions.needs_touch(found["last_seen_at"], now):
        await users_repo.touch_session(resources.db, key, now)
    bind_contextvars(console_user_id=str(found["user_id"]))
    return Session(
        token=token,
        user_id=found["user_id"],
        email=found["email"],
        role=Role(found["role"]),
        timezone=found["timezone"] or state.default_timezone,
    )


def _csrf_given(request: Request, form_value: object) -> str | None:
    header = request.headers.get(sessions.CSRF_HEADER)
    if header:
        return header
    return form_value if isinstance(form_value, str) else None


async def _checked_post(request: Request, session: Session, role: Role, *, form: bool) -> Session:
    form_value = None
    if form and request.headers.get(sessions.CSRF_HEADER) is None:
        form_value = (await request.form()).get(sessions.CSRF_FIELD)
    if not sessions.csrf_ok(
        console_state(request).secret, session.token, _csrf_given(request, form_value)
    ):
        raise Forbidden("The form expired or did not come from this console; reload and retry.")
    if not session.may(role):
        raise Forbidden(f"This needs the {role.value} role; you are {session.role.value}.")
    return session


def writer(role: Role, *, form: bool = True) -> object:
    """A POST dependency: a signed-in user whose role includes `role`, with a valid CSRF
    token (form field, or the X-CSRF-Token header that htmx sends; uploads use the header
    only, since their body streams into the blob store unread)."""

    async def check(
        request: Request, session: Annotated[Session, Depends(current_session)]
    ) -> Session:
        return await _checked_post(request, session, role, form=form)

    return Depends(check)


Viewer = Annotated[Session, Depends(current_session)]
EditorPost = Annotated[Session, writer(Role.EDITOR)]
EditorUpload = Annotated[Session, writer(Role.EDITOR, form=False)]
AdminPost = Annotated[Session, writer(Role.ADMIN)]


async def _admin_view(session: Viewer) -> Session:
    if not session.may(Role.ADMIN):
        raise Forbidden(f"This page is for admins; you are {session.role.value}.")
    return session


AdminView = Annotated[Session, Depends(_admin_view)]
