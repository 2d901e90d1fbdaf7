"""GET /imports/{id}/rejected, and import options from the upload form to the importer.

The end-to-end tests run the importer's main loop in process on the real broker, so that
an upload through the API is imported as in production.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.api.routes.import_rejections import neutralise
from services.api.tests.support import Api
from services.importer.app import main as importer_main

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
async def importer(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[None]:
    producer = EventProducer(settings)
    await producer.start()
    ctx = ServiceContext("importer", settings, pool, producer, asyncio.Event())
    # A group of its own: other modules' offsets must not hide this module's requests.
    service = asyncio.create_task(
        importer_main(ctx, group_id=f"importer-api-test-{uuid.uuid4().hex[:8]}")
    )
    try:
        yield
    finally:
        ctx.stop.set()
        await asyncio.wait_for(service, 20)
        await producer.stop()


async def _new_list(api: Api) -> str:
    answer = await api.client.post(
        "/api/v1/lists", json={"name": "rejections"}, headers=api.auth("editor")
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def _upload(api: Api, list_id: str, data: bytes, **form: str) -> str:
    answer = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("people.csv", data, "text/csv")},
        data=form,
        headers=api.auth("editor"),
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def _finished(api: Api, import_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        job: dict[str, Any] = (
            await api.client.get(f"/api/v1/imports/{import_id}", headers=api.auth("viewer"))
        ).json()
        if job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"import {import_id} did not finish within {DEADLINE_S} s")


async def _rejected(api: Api, import_id: str, role: str = "viewer") -> list[list[str]]:
    answer = await api.client.get(f"/api/v1/imports/{import_id}/rejected", headers=api.auth(role))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    text = answer.content.decode("utf-8")
    assert text.startswith("\ufeff")  # so that Excel reads UTF-8
    return list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))


def test_neutralise_defuses_formulas_only() -> None:
    assert [neutralise(c) for c in ("=1+1", "+49 30", "-2", "@SUM(A1)", "\tx", "ann", "")] == [
        "'=1+1",
        "'+49 30",
        "'-2",
        "'@SUM(A1)",
        "'\tx",
        "ann",
        "",
    ]


async def test_rejected_rows_come_back_under_their_columns_and_defused(
    api: Api, importer: None
) -> None:
    list_id = await _new_list(api)
    data = (
        "email;Vorname;Stadt\n"
        "ok@example.com;Jörg;Köln\n"
        'kaputt;=HYPERLINK("http://evil");München\n'
        ";Ohne;Berlin\n"
        "a@b@example.com;Zwei;@Bonn\n"
        "extra@example.com;zu;viele;Felder\n"
        "second@example.com;Zoë;-Essen\n"
    ).encode("cp1252")
    import_id = await _upload(api, list_id, data, encoding="cp1252", delimiter=";")
    job = await _finished(api, import_id)
    assert job["status"] == "completed", job["error"]
    assert (job["rows_total"], job["rows_imported"], job["rows_rejected"]) == (6, 2, 4)
    assert (job["rows_updated"], job["rows_suppressed"]) == (0, 0)

    assert await _rejected(api, import_id) == [
        ["line", "reason", "email", "Vorname", "Stadt"],
        ["3", "invalid email address", "kaputt", '\'=HYPERLINK("http://evil")', "München"],
        ["4", "missing email address", "", "Ohne", "Berlin"],
        ["5", "invalid email address", "a@b@example.com", "Zwei", "'@Bonn"],
        ["6", "expected 3 fields, found 4", "extra@example.com", "zu", "viele", "Felder"],
    ]
    recipients = await api.client.get(f"/api/v1/lists/{list_id}", headers=api.auth("viewer"))
    assert recipients.json()["recipient_count"] == 2


async def test_a_clean_import_has_only_the_header(api: Api, importer: None) -> None:
    list_id = await _new_list(api)
    import_id = await _upload(api, list_id, b"email,name\nclean@example.com,Cl\n")
    assert (await _finished(api, import_id))["status"] == "completed"
    assert await _rejected(api, import_id) == [["line", "reason"]]


async def test_rejected_streams_many_rows_in_line_order(api: Api, pool: asyncpg.Pool) -> None:
    # Rows written directly (as the importer does): more than one chunk of the stream.
    list_id = await _new_list(api)
    import_id = await _upload(api, list_id, b"email\nx@example.com\n")
    rows = [(uuid.UUID(import_id), 1, "header", "email,note")]
    rows += [
        (uuid.UUID(import_id), line, "invalid email address", f"bad{line},-{line}")
        for line in range(4501, 1, -1)
    ]
    await pool.execute("DELETE FROM import_rejections WHERE import_id = $1", uuid.UUID(import_id))
    await pool.copy_records_to_table("import_rejections", records=rows)
    table = await _rejected(api, import_id, role="admin")
    assert table[0] == ["line", "reason", "email", "note"]
    assert [int(r[0]) for r in table[1:]] == list(range(2, 4502))
    assert table[-1] == ["4501", "invalid email address", "bad4501", "'-4501"]


async def test_rejected_needs_a_key_and_an_existing_import(api: Api) -> None:
    url = f"/api/v1/imports/{uuid.uuid4()}/rejected"
    assert (await api.client.get(url)).status_code == 401
    missing = await api.client.get(url, headers=api.auth("viewer"))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_sheet_option_reaches_the_importer(api: Api, importer: None) -> None:
    from services.importer.tests.files import xlsx

    book = xlsx(
        {
            "Notes": [["nothing", "here"]],
            "People": [["E-mail", "Score"], ["sheet@example.com", 3]],
        }
    )
    list_id = await _new_list(api)
    job = await _finished(api, await _upload(api, list_id, book, sheet="People"))
    assert job["status"] == "completed", job["error"]
    assert job["rows_imported"] == 1
    missing = await _finished(api, await _upload(api, list_id, book, sheet="Nope"))
    assert missing["status"] == "failed"
    assert "no sheet named 'Nope'" in missing["error"]


@pytest.mark.parametrize(
    ("form", "field"),
    [({"encoding": "klingon-8"}, "body.encoding"), ({"delimiter": "::"}, "body.delimiter")],
)
async def test_unusable_options_are_refused(
    api: Api, pool: asyncpg.Pool, form: dict[str, str], field: str
) -> None:
    list_id = await _new_list(api)
    answer = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("people.csv", b"email\na@example.com\n", "text/csv")},
        data=form,
        headers=api.auth("editor"),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field
    imports = await pool.fetchval(
        "SELECT count(*) FROM import_requests WHERE list_id = $1", uuid.UUID(list_id)
    )
    assert imports == 0
