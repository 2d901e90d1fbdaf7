"""The scheduler splices the recipients PostgreSQL encoded into `batch.ready`: what it
publishes must be what the model would have published, and what consumers read back."""

from __future__ import annotations

import json
from uuid import uuid4

import orjson

from libs.common.events import BatchReady, BatchRecipient, encode, encode_batch_ready


def _header(**extra: object) -> BatchReady:
    campaign = uuid4()
    fields: dict[str, object] = {
        "batch_id": f"{campaign}:3",
        "campaign_id": campaign,
        "batch_no": 3,
        "batches_total": 9,
        "audience_total": 4_321,
        "suppressed_total": 2,
        "content_id": uuid4(),
        "provider": "sendgrid",
        "recipients": [],
    }
    return BatchReady.model_validate({**fields, **extra})


ROWS = [
    (1, "ana@example.com", {"first_name": "Ana", "n": 3, "vip": True, "tags": ["a", "b"]}),
    (2, "bö@example.org", {"first_name": 'Quote " and \\ slash', "score": 1.5, "none": None}),
    (3, "c@example.net", {}),
]


def test_the_fast_encoding_is_the_models_own_json() -> None:
    for header in (_header(), _header(variant="B", emitted=4, suppressed_ids=[2])):
        # As PostgreSQL's json_agg writes it: its own spacing.
        array = ", ".join(
            f'{{"recipient_id" : {r}, "email" : {orjson.dumps(e).decode()},'
            f' "fields" : {orjson.dumps(f).decode()}}}'
            for r, e, f in ROWS
        )
        fast = encode_batch_ready(header, f"[{array}]".encode())
        recipients = [BatchRecipient(recipient_id=r, email=e, fields=f) for r, e, f in ROWS]
        slow = encode(header.model_copy(update={"recipients": recipients}))
        assert json.loads(fast) == json.loads(slow)
        decoded = BatchReady.model_validate_json(fast)
        assert [(r.recipient_id, r.email, r.fields) for r in decoded.recipients] == ROWS
        assert decoded.variant == header.variant and decoded.suppressed_ids == header.suppressed_ids


def test_encode_takes_bytes_as_already_encoded() -> None:
    assert encode(b'{"x": 1}') == b'{"x": 1}'
