"""Request and response bodies of the recipient endpoints."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, Field, StrictBool, StrictInt, field_validator

from libs.common.events import ConsentStatement
from services.api.schemas import Strict, Text

MAX_FIELDS = 100
# Usable as `{{ key }}` in a template; `email` is the address itself, not a merge field.
_FIELD_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
RESERVED_KEYS = frozenset({"email"})

_INT_RANGE = (-(2**63), 2**63 - 1)


def _int_in_range(value: Any) -> Any:
    # Refused here, before the union: an integer too large for 64 bits would otherwise
    # quietly become an imprecise float.
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            raise ValueError("integers must fit in 64 bits; send larger numbers as text")
    return value


FieldValue = Annotated[
    Annotated[Text, Field(max_length=2000)]
    | StrictBool
    | StrictInt
    | Annotated[float, Field(allow_inf_nan=False)],
    BeforeValidator(_int_in_range),
]


def _check_keys(fields: dict[str, Any] | None) -> dict[str, Any] | None:
    if fields is None:
        return None
    if len(fields) > MAX_FIELDS:
        raise ValueError(f"at most {MAX_FIELDS} merge fields")
    for key in fields:
        if not _FIELD_KEY.match(key):
            raise ValueError(
                f"field name {key[:70]!r} must be letters, digits and _ (not first), "
                "at most 64, so that templates can use it as {{ name }}"
            )
        if key in RESERVED_KEYS:
            raise ValueError(f"{key!r} is the recipient's address, not a merge field")
    return fields


class RecipientCreate(Strict):
    email: Text = Field(
        max_length=320,
        description="Trimmed and lower-cased, then checked as the importer checks a file.",
        examples=["Ada@Example.com"],
    )
    fields: dict[str, FieldValue] = Field(
        default_factory=dict,
        description="Merge fields for templates, e.g. first_name.",
        examples=[{"first_name": "Ada", "plan": "pro"}],
    )

    consent: ConsentStatement | None = Field(
        None,
        description="The legal basis on which this address may be mailed (recorded with the"
        " add; source default `api`).",
        examples=[{"basis": "consent", "source": "signup-desk"}],
    )
    _keys = field_validator("fields")(_check_keys)


class RecipientUpdate(Strict):
    """Only what is given changes. `fields` is merged into the recipient's fields; a field
    set to null is removed."""

    email: Text | None = Field(None, max_length=320)
    fields: dict[str, FieldValue | None] | None = Field(
        None, examples=[{"plan": "enterprise", "trial_ends": None}]
    )

    _keys = field_validator("fields")(_check_keys)


class RecipientOut(BaseModel):
    id: int
    list_id: UUID
    email: str
    fields: dict[str, Any]
    status: Literal["active", "unconfirmed", "unsubscribed"] = Field(
        "active",
        description="Campaigns mail `active` recipients only: `unconfirmed` waits for the"
        " confirmation link of a double opt-in list, `unsubscribed` left the list.",
    )
    created_at: datetime
    updated_at: datetime
