"""`mailfleet import`: the upload and follow-up against the API app (in process), with the
importer's main loop running on the real broker."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from libs.common.cli import app as cli_app
from libs.common.import_cli import ImportClient, ImportFailed, ImportRequest
from libs.common.kafka import EventProducer
from libs.common.service import ServiceContext
from libs.common.settings import Settings
from services.api.app import create_app
from services.api.tests.support import running
from services.importer.app import main as importer_main


@pytest.fixture(scope="module")
async def api(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The API app with its lifespan, an admin key, and the importer running alongside."""
    key = f"mf_cli_test_{uuid.uuid4().hex}"
    app = create_app(settings.model_copy(update={"bootstrap_api_key": key}))
    producer = EventProducer(settings)
    await producer.start()
    ctx = ServiceContext("importer", settings, pool, producer, asyncio.Event())
    service = asyncio.create_task(
        importer_main(ctx, group_id=f"importer-cli-test-{uuid.uuid4().hex[:8]}")
    )
    try:
        async with running(app) as client:
            yield key, client
    finally:
        ctx.stop.set()
        await asyncio.wait_for(service, 20)
        await producer.stop()


def _client(api: tuple[str, httpx.AsyncClient], out: io.StringIO) -> ImportClient:
    key, http = api
    return ImportClient(
        "http://api.test",
        key,
        transport=http._transport,  # noqa: SLF001 - the in-process ASGI transport
        poll_interval_s=0.05,
        console=Console(file=out, width=120, force_terminal=False),
    )


async def _new_list(api: tuple[str, httpx.AsyncClient]) -> str:
    key, http = api
    answer = await http.post(
        "/api/v1/lists", json={"name": "cli"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_import_uploads_follows_and_summarises(
    api: tuple[str, httpx.AsyncClient], tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(
        "email|name\n"
        + "".join(f"cli{i}@example.com|N{i}\n" for i in range(300))
        + "CLI0@example.com|again\nbroken|x\n"
    )
    out = io.StringIO()
    list_id = await _new_list(api)
    job = await _client(api, out).run(ImportRequest(path, list_id, delimiter="|"))

    assert job["status"] == "completed", job["error"]
    assert (job["rows_total"], job["rows_imported"], job["rows_duplicate"]) == (302, 300, 1)
    assert job["rows_rejected"] == 1
    text = out.getvalue()
    assert f"import {job['id']}: completed" in text
    for label, count in (("read", "302"), ("imported (new)", "300"), ("rejected", "1")):
        assert any(
            label in line and line.rstrip(" │|").endswith(count) for line in text.splitlines()
        )
    assert f"/api/v1/imports/{job['id']}/rejected" in text
    assert "uploading" in text and "importing" in text


async def test_refused_upload_and_failed_import_are_reported(
    api: tuple[str, httpx.AsyncClient], tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("name,phone\nAnn,1\n")
    with pytest.raises(ImportFailed, match=r"refused \(404\)"):
        await _client(api, io.StringIO()).run(ImportRequest(path, str(uuid.uuid4())))
    out = io.StringIO()
    job = await _client(api, out).run(ImportRequest(path, await _new_list(api)))
    assert job["status"] == "failed"
    assert "no email column" in out.getvalue()


def test_command_needs_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILFLEET_API_KEY", raising=False)
    path = tmp_path / "a.csv"
    path.write_text("email\na@example.com\n")
    result = CliRunner().invoke(cli_app, ["import", str(path), "--list", str(uuid.uuid4())])
    assert result.exit_code == 2
    assert "MAILFLEET_API_KEY" in result.output
