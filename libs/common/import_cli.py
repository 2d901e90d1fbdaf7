"""`mailfleet import FILE --list ID`: upload a file through the REST API and follow it.

Shows a progress bar while the file uploads (bytes) and while the importer reads it
(rows so far), then a summary table of where every row went. Talks only to the API, so
it works against any running mailfleet.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

FINAL = ("completed", "failed")
UPLOAD_CHUNK = 1024 * 1024
OUTCOMES = (
    ("rows_imported", "imported (new)"),
    ("rows_updated", "updated"),
    ("rows_duplicate", "duplicates in the file"),
    ("rows_suppressed", "suppressed (not added)"),
    ("rows_rejected", "rejected"),
)


class ImportFailed(Exception):
    """The API refused the upload, or could not be reached; the message says why."""


@dataclass(frozen=True)
class ImportRequest:
    path: Path
    list_id: str
    email_column: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None

    def form(self) -> dict[str, str]:
        chosen = {
            "email_column": self.email_column,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "sheet": self.sheet,
        }
        return {name: value for name, value in chosen.items() if value}


@dataclass
class ImportClient:
    api_url: str
    api_key: str
    transport: httpx.AsyncBaseTransport | None = None
    poll_interval_s: float = 0.25
    timeout_s: float = 3600.0
    console: Console = field(default_factory=Console)

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {self.api_key}"},
            transport=self.transport,
            timeout=httpx.Timeout(60.0, write=600.0),
        )

    async def run(self, request: ImportRequest) -> dict[str, Any]:
        """Upload, follow to the end, print the summary; the import's final state."""
        size = request.path.stat().st_size
        with self._progress() as progress, request.path.open("rb") as handle:
            async with self._http() as http:
                uploading = progress.add_task("uploading", total=size, amount=_mib(0, size))
                upload = _CountingFile(handle, progress, uploading, size)
                import_id = await self._upload(http, request, upload)
                reading = progress.add_task("importing", total=None, amount="0 rows")
                job = await self._follow(http, import_id, progress, reading)
        self.console.print(f"import {job['id']}: {job['status']}")
        self.console.print(summary(job))
        if job.get("rows_rejected"):
            self.console.print(
                f"rejected rows, as CSV: GET /api/v1/imports/{job['id']}/rejected", soft_wrap=True
            )
        return job

    def _progress(self) -> Progress:
        return Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(),
            console=self.console,
        )

    async def _upload(
        self, http: httpx.AsyncClient, request: ImportRequest, upload: _CountingFile
    ) -> str:
        try:
            answer = await http.post(
                f"/lists/{request.list_id}/imports",
                files={
                    "file": (request.path.name, cast(BinaryIO, upload), "application/octet-stream")
                },
                data=request.form(),
            )
        except httpx.HTTPError as exc:
            raise ImportFailed(f"cannot reach the API: {exc}") from exc
        if answer.status_code != 202:
            raise ImportFailed(f"the upload was refused ({answer.status_code}): {_detail(answer)}")
        return str(answer.json()["id"])

    async def _follow(
        self, http: httpx.AsyncClient, import_id: str, progress: Progress, task: TaskID
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            answer = await http.get(f"/imports/{import_id}")
            if answer.status_code != 200:
                raise ImportFailed(f"cannot read import {import_id}: {_detail(answer)}")
            job: dict[str, Any] = answer.json()
            rows = int(job["rows_total"])
            progress.update(task, completed=rows, amount=f"{rows:,} rows")
            if job["status"] in FINAL:
                progress.update(task, total=max(rows, 1), completed=max(rows, 1))
                return job
            if time.monotonic() > deadline:
                raise ImportFailed(f"import {import_id} still {job['status']} after the timeout")
            await asyncio.sleep(self.poll_interval_s)  # a remote status: nothing to await


class _CountingFile:
    """The file as httpx reads it into the multipart body, advancing the upload bar.

    Seekable, so that httpx can tell its length and send a Content-Length (the API
    refuses an oversized upload before reading it)."""

    def __init__(self, handle: BinaryIO, progress: Progress, task: TaskID, size: int) -> None:
        self.handle = handle
        self.progress = progress
        self.task = task
        self.size = size

    def read(self, size: int = UPLOAD_CHUNK) -> bytes:
        chunk = self.handle.read(size)
        done = self.handle.tell()
        self.progress.update(self.task, completed=done, amount=_mib(done, self.size))
        return chunk

    def tell(self) -> int:
        return self.handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)


def _mib(done: int, total: int) -> str:
    if total < 2**20:
        return f"{done / 2**10:.0f}/{total / 2**10:.0f} KiB"
    return f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB"


def summary(job: dict[str, Any]) -> Table:
    table = Table(show_header=True)
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("read", f"{job['rows_total']:,}")
    for key, label in OUTCOMES:
        table.add_row(label, f"{job.get(key, 0):,}")
    if job.get("error"):
        table.add_row("error", str(job["error"]))
    return table


def _detail(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:500]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)
