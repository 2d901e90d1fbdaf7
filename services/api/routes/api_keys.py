"""API keys (admin only). The key itself is shown once, at creation; only its hash is kept."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from libs.common.logging import get_logger
from libs.web.problems import ProblemError, problem_responses
from services.api import repository
from services.api.audit import Target, record_audit
from services.api.deps import IsAdmin, Resources
from services.api.keys import display_prefix, generate_key, hash_key
from services.api.pagination import BadCursor
from services.api.routes.common import DEFAULT_PAGE, Cursor, Limit, bad_cursor, not_found
from services.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, Page

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/api-keys", tags=["api keys"])


@router.post(
    "",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=problem_responses(401, 403, 413, 422),
)
async def create_key(body: ApiKeyCreate, resources: Resources, caller: IsAdmin) -> ApiKeyCreated:
    key = generate_key()
    async with resources.db.acquire() as conn, conn.transaction():
        row = await repository.insert_key(
            conn, body.name, body.role.value, display_prefix(key), hash_key(key)
        )
        assert row is not None  # 256 random bits do not collide
        await record_audit(
            conn,
            caller.actor,
            "api_key.create",
            Target("api_key", str(row["id"])),
            {"name": body.name, "role": body.role.value, "key_prefix": row["key_prefix"]},
        )
    log.info("api key created", key_id=str(row["id"]), role=body.role.value, by=str(caller.key_id))
    return ApiKeyCreated(**row, key=key)


@router.get("", response_model=Page[ApiKeyOut], responses=problem_responses(401, 403, 422))
async def list_keys(
    resources: Resources, _: IsAdmin, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
) -> Page[ApiKeyOut]:
    try:
        rows, next_cursor = await repository.page_keys(resources.db, cursor, limit)
    except BadCursor as exc:
        raise bad_cursor(exc) from exc
    return Page[ApiKeyOut](items=[ApiKeyOut(**r) for r in rows], next_cursor=next_cursor)


@router.delete(
    "/{key_id}", response_model=ApiKeyOut, responses=problem_responses(401, 403, 404, 409, 422)
)
async def revoke_key(key_id: UUID, resources: Resources, caller: IsAdmin) -> ApiKeyOut:
    """Revoke a key: it stops working at once. An admin cannot revoke the key it uses."""
    if key_id == caller.key_id:
        raise ProblemError(
            409,
            "this is the key making the request; revoke it with another admin key",
            kind="own-key",
        )
    async with resources.db.acquire() as conn, conn.transaction():
        row = await repository.revoke_key(conn, key_id)
        if row is None:
            raise not_found("api key", key_id)
        await record_audit(
            conn,
            caller.actor,
            "api_key.revoke",
            Target("api_key", str(key_id)),
            {"name": row["name"], "role": row["role"]},
        )
    log.info("api key revoked", key_id=str(key_id), by=str(caller.key_id))
    return ApiKeyOut(**row)
