"""A campaign made from a template: the template's content, copied at that moment."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from libs.web.problems import FieldError, ProblemError
from services.api import templates_repo
from services.api.repository import Executor


async def content_from_template(
    db: Executor, template_id: UUID, version: int | None
) -> dict[str, Any]:
    """subject, html, text, template_id and template_version to store in the campaign.

    Copied rather than referenced, so that later template edits never change a campaign.
    """
    row = await templates_repo.get_template(db, template_id, version)
    if row is None:
        field, message = (
            ("body.template_version", f"template {template_id} has no version {version}")
            if version is not None and await templates_repo.template_exists(db, template_id)
            else ("body.template_id", f"no template with id {template_id}")
        )
        raise ProblemError(
            422,
            f"{field.removeprefix('body.')}: {message}; see GET /api/v1/templates",
            kind="validation",
            errors=[FieldError(field=field, message=message)],
        )
    return {
        "subject": row["subject"],
        "html": row["html"],
        "text": row["text"],
        "template_id": row["id"],
        "template_version": row["version"],
    }


async def resolve_campaign_content(db: Executor, values: dict[str, Any]) -> dict[str, Any]:
    """A new campaign's values with its content: given inline, or copied from a template.

    Exactly one of the two: mixing them would leave unclear which part came from where.
    """
    inline = [part for part in ("subject", "html", "text") if values.get(part) is not None]
    template_id = values.get("template_id")
    if template_id is None:
        if values.get("template_version") is not None:
            raise _invalid("body.template_version", "only valid with template_id")
        missing = [part for part in ("subject", "html") if values.get(part) is None]
        if missing:
            raise ProblemError(
                422,
                f"{' and '.join(missing)} required (or give template_id to use a template)",
                kind="validation",
                errors=[
                    FieldError(field=f"body.{part}", message="Field required") for part in missing
                ],
            )
        return values
    if inline:
        raise _invalid(
            f"body.{inline[0]}",
            "give either template_id or subject/html/text, not both",
        )
    return values | await content_from_template(db, template_id, values.get("template_version"))


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(
        422,
        f"{field.removeprefix('body.')}: {message}",
        kind="validation",
        errors=[FieldError(field=field, message=message)],
    )
