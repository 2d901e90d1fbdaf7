"""The audit log: who did what to which target, and when. Append-only (migration 0012).

`record_audit` is the one way in; call it with the connection of the action's own
transaction, so that an action and its record commit together or not at all. The actor
is an API key today and a console user as well (actor kind `user`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from structlog.contextvars import get_contextvars

from services.api.repository import Executor, Row, _page

ActorKind = Literal["api_key", "user", "system"]


@dataclass(frozen=True)
class Actor:
    """Who acted: `id` is the key's or user's id, `name` its name at the time."""

    kind: ActorKind
    id: str
    name: str = ""


@dataclass(frozen=True)
class Target:
    """What was acted on: e.g. Target("suppression", "ada@example.com")."""

    kind: str
    id: str


SYSTEM = Actor("system", "system", "mailfleet")


async def record_audit(
    conn: Executor,
    actor: Actor,
    action: str,
    target: Target,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one record. `action` is "<thing>.<verb>", e.g. "api_key.revoke".

    `details` must hold no secret (never a key or a password): the log is kept for good.
    """
    await conn.execute(
        "INSERT INTO audit_log (actor_kind, actor_id, actor_name, action, target_kind,"
        " target_id, details, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        actor.kind,
        actor.id,
        actor.name[:200],
        action,
        target.kind,
        target.id[:400],
        details or {},  # the pool's jsonb codec encodes it
        get_contextvars().get("request_id"),
    )


_SELECT = (
    "SELECT id, created_at, actor_kind, actor_id, actor_name, action, target_kind, target_id,"
    " details, request_id FROM audit_log"
)


async def page_audit(
    db: Executor,
    cursor: str | None,
    limit: int,
    action: str | None = None,
    target_kind: str | None = None,
    target_id: str | None = None,
) -> tuple[list[Row], str | None]:
    """Newest first; each filter narrows by equality."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("action", action),
        ("target_kind", target_kind),
        ("target_id", target_id),
    ):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    return await _page(db, _SELECT, where, args, cursor, limit)
