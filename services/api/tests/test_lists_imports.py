"""Lists, file imports into them, and import status."""

from __future__ import annotations

import uuid

import asyncpg

from libs.common.blobs import BlobStore, parse_ref
from libs.common.settings import Settings
from services.api.app import create_app
from services.api.tests.support import UPLOAD_LIMIT, Api, find_event, running

PROBLEM = "application/problem+json"
CSV = "Email,First_Name\nada@example.com,Ada\nbob@example.com,Bob\n"


async def _new_list(api: Api, name: str = "people") -> str:
    answer = await api.client.post("/api/v1/lists", json={"name": name}, headers=api.auth("editor"))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_create_and_read_list_with_recipient_count(api: Api, pool: asyncpg.Pool) -> None:
    created = await api.client.post(
        "/api/v1/lists", json={"name": "Newsletter"}, headers=api.auth("editor")
    )
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "Newsletter" and body["created_at"]
    await pool.executemany(
        "INSERT INTO recipients (list_id, email) VALUES ($1, $2)",
        [(uuid.UUID(body["id"]), f"r{i}@example.com") for i in range(3)],
    )
    read = await api.client.get(f"/api/v1/lists/{body['id']}", headers=api.auth("viewer"))
    assert read.status_code == 200
    assert read.json()["recipient_count"] == 3


async def test_list_errors(api: Api) -> None:
    missing = await api.client.get(f"/api/v1/lists/{uuid.uuid4()}", headers=api.auth("viewer"))
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    bad_id = await api.client.get("/api/v1/lists/not-a-uuid", headers=api.auth("viewer"))
    assert bad_id.status_code == 422
    assert bad_id.json()["errors"][0]["field"] == "path.list_id"
    empty = await api.client.post("/api/v1/lists", json={"name": ""}, headers=api.auth("editor"))
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "body.name"


async def test_lists_cursor_pagination_visits_every_list_once(api: Api) -> None:
    mine = {await _new_list(api, f"page {i}") for i in range(5)}
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await api.client.get("/api/v1/lists", params=params, headers=api.auth("viewer"))
        assert page.status_code == 200
        assert len(page.json()["items"]) <= 2
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert mine <= set(seen)
    bad = await api.client.get("/api/v1/lists?cursor=zzz", headers=api.auth("viewer"))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"


async def test_upload_stores_blob_publishes_event_and_reports_status(
    api: Api, pool: asyncpg.Pool
) -> None:
    list_id = await _new_list(api)
    answer = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("people.csv", CSV.encode(), "text/csv")},
        data={"email_column": "Email"},
        headers=api.auth("editor"),
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "queued"
    import_id = answer.json()["id"]

    key, event = await find_event(
        api.settings, "import.requested", lambda e: e.get("import_id") == import_id
    )
    assert key == list_id.encode()
    assert event["list_id"] == list_id
    assert event["filename"] == "people.csv"
    assert event["mapping"] == {"email": "Email"}
    stored = b"".join([c async for c in BlobStore(pool).read(parse_ref(event["file_ref"]))])
    assert stored == CSV.encode()

    queued = await api.client.get(f"/api/v1/imports/{import_id}", headers=api.auth("viewer"))
    assert queued.status_code == 200
    assert queued.json()["status"] == "queued" and queued.json()["rows_total"] == 0

    # The importer's progress, as it would record it.
    await pool.execute(
        "INSERT INTO import_jobs (id, list_id, status, rows_total, rows_imported, rows_rejected,"
        " rows_duplicate, error) VALUES ($1, $2, 'failed', 5, 2, 2, 1, 'bad file')",
        uuid.UUID(import_id),
        uuid.UUID(list_id),
    )
    done = (await api.client.get(f"/api/v1/imports/{import_id}", headers=api.auth("viewer"))).json()
    assert (done["status"], done["rows_total"], done["rows_imported"]) == ("failed", 5, 2)
    assert (done["rows_rejected"], done["rows_duplicate"], done["error"]) == (2, 1, "bad file")

    listed = await api.client.get(f"/api/v1/lists/{list_id}/imports", headers=api.auth("viewer"))
    assert [i["id"] for i in listed.json()["items"]] == [import_id]


async def test_upload_without_mapping_leaves_email_column_unset(api: Api) -> None:
    list_id = await _new_list(api)
    answer = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("x.csv", CSV.encode(), "text/csv")},
        headers=api.auth("editor"),
    )
    assert answer.status_code == 202
    import_id = answer.json()["id"]
    _, event = await find_event(
        api.settings, "import.requested", lambda e: e.get("import_id") == import_id
    )
    assert event["mapping"] == {"email": None}


async def test_upload_over_the_limit_is_413_and_keeps_nothing(api: Api, pool: asyncpg.Pool) -> None:
    list_id = await _new_list(api)
    before = await pool.fetchval("SELECT count(*) FROM blobs")
    # Streamed past the limit (the declared length alone does not give it away).
    streamed = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("big.csv", b"x" * (UPLOAD_LIMIT + 1), "text/csv")},
        headers=api.auth("editor"),
    )
    assert streamed.status_code == 413
    assert streamed.headers["content-type"] == PROBLEM
    assert str(UPLOAD_LIMIT) in streamed.json()["detail"]
    # Refused from the declared length, before reading.
    declared = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("huge.csv", b"x" * (UPLOAD_LIMIT + 100_000), "text/csv")},
        headers=api.auth("editor"),
    )
    assert declared.status_code == 413
    assert await pool.fetchval("SELECT count(*) FROM blobs") == before
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM import_requests WHERE list_id = $1", uuid.UUID(list_id)
        )
        == 0
    )


async def test_upload_errors(api: Api) -> None:
    unknown = await api.client.post(
        f"/api/v1/lists/{uuid.uuid4()}/imports",
        files={"file": ("x.csv", b"email\n", "text/csv")},
        headers=api.auth("editor"),
    )
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM

    list_id = await _new_list(api)
    no_file = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        data={"email_column": "email"},
        files={"other": ("x.csv", b"email\n", "text/csv")},
        headers=api.auth("editor"),
    )
    assert no_file.status_code == 422
    assert no_file.json()["errors"][0]["field"] == "body.file"

    not_multipart = await api.client.post(
        f"/api/v1/lists/{list_id}/imports", json={"file": "x"}, headers=api.auth("editor")
    )
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["detail"]

    viewer = await api.client.post(
        f"/api/v1/lists/{list_id}/imports",
        files={"file": ("x.csv", b"email\n", "text/csv")},
        headers=api.auth("viewer"),
    )
    assert viewer.status_code == 403


async def test_unknown_import_is_404(api: Api) -> None:
    answer = await api.client.get(f"/api/v1/imports/{uuid.uuid4()}", headers=api.auth("viewer"))
    assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM


async def test_large_upload_arrives_intact_across_chunks(
    api_settings: Settings, pool: asyncpg.Pool
) -> None:
    app = create_app(api_settings.model_copy(update={"max_upload_bytes": 8 * 1024 * 1024}))
    content = b"".join(f"user{i}@example.com,{i}\n".encode() for i in range(150_000))
    assert len(content) > 2 * 1024 * 1024  # spans several blob chunks
    async with running(app) as client:
        auth = {"Authorization": f"Bearer {api_settings.bootstrap_api_key}"}
        list_id = (await client.post("/api/v1/lists", json={"name": "big"}, headers=auth)).json()[
            "id"
        ]
        answer = await client.post(
            f"/api/v1/lists/{list_id}/imports",
            files={"file": ("big.csv", content, "text/csv")},
            headers=auth,
        )
        assert answer.status_code == 202, answer.text
    blob_id = await pool.fetchval(
        "SELECT blob_id FROM import_requests WHERE id = $1", uuid.UUID(answer.json()["id"])
    )
    stored = b"".join([c async for c in BlobStore(pool).read(blob_id)])
    assert stored == content
