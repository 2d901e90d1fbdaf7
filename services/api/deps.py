"""What route handlers get injected: the app's resources and the authenticated caller."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal, TextIO
from uuid import UUID

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs.common.blobs import BlobStore
from libs.common.kafka import EventProducer
from libs.common.logging import bind_contextvars
from libs.common.settings import Settings
from libs.web.problems import ProblemError
from services.api import repository
from services.api.audit import Actor
from services.api.keys import Role, display_prefix, hash_key, role_allows
from services.api.ratelimit import FailureLimiter, client_address


@dataclass
class ApiResources:
    """Set up by the lifespan; the pool and producer exist only while the app runs."""

    settings: Settings
    # Failed authentications per client address and per key prefix (see ratelimit.py).
    auth_failures: FailureLimiter
    pool: asyncpg.Pool | None = None
    producer: EventProducer | None = None
    # Where a generated admin key may be shown (see bootstrap.operator_terminal).
    terminal: TextIO | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise ProblemError(503, "the API is starting; the database is not connected yet")
        return self.pool

    @property
    def events(self) -> EventProducer:
        if self.producer is None:
            raise ProblemError(503, "the API is starting; the broker is not connected yet")
        return self.producer

    @property
    def blobs(self) -> BlobStore:
        return BlobStore(self.db)


def get_resources(request: Request) -> ApiResources:
    resources: ApiResources = request.app.state.resources
    return resources


Resources = Annotated[ApiResources, Depends(get_resources)]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `Authorization: Bearer mf_...`. Roles: admin, editor, viewer.",
)


@dataclass(frozen=True)
class Caller:
    """Who calls a route function: an API key, or a console user acting through the
    console (then `key_id` holds the user's id and `name` the user's email)."""

    key_id: UUID
    name: str
    role: Role
    kind: Literal["api_key", "user"] = "api_key"

    @property
    def actor(self) -> Actor:
        """Who this caller is in the audit log."""
        return Actor(self.kind, str(self.key_id), self.name)


def client_of(request: Request, resources: ApiResources) -> str:
    """The caller's address; X-Forwarded-For counts only from MAILFLEET_TRUSTED_PROXIES."""
    peer = request.client.host if request.client else "unknown"
    return client_address(
        peer, request.headers.get("x-forwarded-for"), resources.settings.trusted_proxy_networks()
    )


def _refuse_when_limited(limiter: FailureLimiter, buckets: list[str]) -> None:
    waits = [w for w in (limiter.retry_after(b) for b in buckets) if w is not None]
    if waits:
        wait = max(1, math.ceil(max(waits)))
        raise ProblemError(
            429,
            f"too many failed authentication attempts; retry in {wait} s",
            kind="too-many-auth-failures",
            headers={"Retry-After": str(wait)},
        )


async def authenticate(
    request: Request,
    resources: Resources,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    key = (
        credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else None
    )
    # The key is checked first: one that validates is never refused, however many wrong
    # keys came from the same address (an ingress, an office) before it.
    found = await repository.find_active_key(resources.db, hash_key(key)) if key else None
    if found is None:
        buckets = [f"client:{client_of(request, resources)}"]
        if key:
            buckets.append(f"prefix:{display_prefix(key)}")
        _refuse_when_limited(resources.auth_failures, buckets)
        for bucket in buckets:
            resources.auth_failures.record_failure(bucket)
        raise ProblemError(
            401,
            "send a valid API key as 'Authorization: Bearer <key>'"
            if key
            else "missing API key: send 'Authorization: Bearer <key>'",
            kind="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
    await repository.touch_key(resources.db, found["id"])
    caller = Caller(found["id"], found["name"], Role(found["role"]))
    bind_contextvars(api_key_id=str(caller.key_id))
    return caller


def require(role: Role) -> object:
    """A dependency that admits callers whose role includes `role`."""

    async def check(caller: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if not role_allows(caller.role, role):
            raise ProblemError(
                403,
                f"this needs the {role.value} role; the key '{caller.name}' is {caller.role.value}",
                kind="forbidden",
            )
        return caller

    return Depends(check)


CanRead = Annotated[Caller, require(Role.VIEWER)]
CanEdit = Annotated[Caller, require(Role.EDITOR)]
IsAdmin = Annotated[Caller, require(Role.ADMIN)]
