"""Import benchmark: mailfleet's importer against a bare COPY and a pandas importer.

    .venv/bin/python bench/import.py [--rows 1000000] [--xlsx-rows 100000] [--memory-rows 0]
                                     [--crm-rows 1000000] [--crm-xlsx-rows 100000]
                                     [--crm-random-order]

Generates realistic files (5 % invalid addresses, 3 % duplicates of earlier addresses in
another case, unicode names, 4 merge fields: first_name, last_name, city, age), starts its
own broker and a fresh database, runs the whole stack as processes (`start_stack`, as
`bench/e2e.py` does) and prints, from one run:

- mailfleet end to end: the upload through the real API (HTTP multipart) until the
  importer's `import.completed` event arrives (published after its commit), into a new (empty) list, and again into the same list
  (every row an update: the upsert path);
- the ceiling: a bare binary COPY of the same rows the import kept (valid, deduplicated)
  into a table like `recipients` (same columns, collations, defaults and indexes), in
  file order and sorted by address, records built before the clock starts;
- the baseline: the seed's approach, pandas (read_csv / read_excel with openpyxl),
  normalise and validate with pandas string methods, drop duplicates, COPY into a staging
  table and one INSERT ... ON CONFLICT into `recipients`;
- a CRM export as a new user brings one (--crm-rows, --crm-xlsx-rows; 0 skips it): 7
  columns whose headers are in mixed case with spaces (`Email`, `First Name`, ...), a
  free-text notes column with quoted commas, quotes and line breaks, ~4 % invalid
  addresses and ~3 % duplicates that differ only by case or padding; the same import,
  the bare COPY of what it kept, and where the time went;
- with --memory-rows N: the importer process's peak RSS (VmHWM) after importing an
  N-row CSV (5,000,000 for the 1 GB bound).

pandas and openpyxl are needed for the baseline only (not dependencies of mailfleet).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.infra import BenchInfrastructure, machine  # noqa: E402
from libs.common import db  # noqa: E402
from libs.common.events import ImportProgress, Topic  # noqa: E402
from tests.e2e.harness import RunningStack, start_stack  # noqa: E402

HEADER = ["email", "first_name", "last_name", "city", "age"]
FIRST_NAMES = [
    "Anna", "José", "Zoë", "Łukasz", "Søren", "Åsa", "François", "Ștefan", "Dmitrij", "Mei",
    "Юлия", "Χρήστος", "أحمد", "山田", "Chloé", "Björn", "Renée", "İsmail", "Nguyễn", "Ólafur",
    "John", "Mary", "Priya", "Kwame", "Siobhán", "Jürgen", "Ewa", "Hiroshi", "Amélie", "Óscar",
]  # fmt: skip
LAST_NAMES = [
    "Müller", "García", "Nowak", "Søndergaard", "Dubois", "Popescu", "Иванов", "Παπαδόπουλος",
    "Smith", "O'Brien", "van der Berg", "Kowalczyk", "Nakamura", "da Silva", "Łęcka", "Öztürk",
]  # fmt: skip
CITIES = ["Berlin", "Kraków", "São Paulo", "Zürich", "Москва", "Αθήνα", "東京", "Lyon", "Oslo"]
DOMAINS = [f"mail{i}.example.com" for i in range(40)] + ["gmail.com", "web.de", "bücher.de"]
INVALID = [
    "{n}.{i}@",
    "{n}{i}example.com",
    "{n} {i}@example.com",
    "",
    "{n}{i}@@example.com",
    "{n}.{i}@example",
    "{n}.{i}@exa mple.com",
]
ADDRESS = r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]+@(?:[^@\s.]+\.)+[^@\s.]{2,}$"


# ----- data -----


def make_rows(n: int, seed: int = 7) -> list[list[str]]:
    """n rows: ~5 % invalid addresses, ~3 % earlier addresses again in another case."""
    rng = random.Random(seed)
    rows: list[list[str]] = []
    valid: list[str] = []
    for i in range(n):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        local = first.lower() if first.isascii() else "user"
        draw = rng.random()
        if draw < 0.05:
            email = rng.choice(INVALID).format(n=local, i=i)
        elif draw < 0.08 and valid:
            email = rng.choice(valid).upper()
        else:
            email = f"{local}.{i}@{rng.choice(DOMAINS)}"
            if rng.random() < 0.2:
                email = email.capitalize()
            valid.append(email)
        rows.append([email, first, last, rng.choice(CITIES), str(18 + rng.randrange(70))])
    return rows


CRM_HEADER = ["Email", "First Name", "Last Name", "Company", "Phone", "Signup Date", "Notes"]
CRM_KEYS = ["first_name", "last_name", "company", "phone", "signup_date", "notes"]
COMPANIES = ["Acme, Inc.", "Globex", "Initech GmbH", "Umbrella Corp.", "Müller & Söhne KG"]
NOTES = [
    "",
    "Called, left a message",
    'Prefers the "weekly" digest',
    "VIP\nrenewal due in March",
    "Met at the expo, Berlin\nasked for pricing, follow up",
    "n/a",
    "Unsubscribed from SMS; email OK",
]


def make_crm_rows(n: int, seed: int = 13, random_order: bool = False) -> list[list[str]]:
    """n rows shaped like a CRM export: ~4 % invalid, ~3 % earlier addresses again with
    another case and surrounding spaces. The addresses (`anna.17@...`) gather around a few
    dozen names in address order; `random_order` puts a random prefix before each, as
    in an export sorted by sign-up date, so that file order is random address order."""
    rng = random.Random(seed)
    prefixes = random.Random(seed + 1)  # its own draws: the rows stay those of `seed`
    rows: list[list[str]] = []
    valid: list[str] = []
    for i in range(n):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        local = first.lower() if first.isascii() else "user"
        draw = rng.random()
        if draw < 0.04:
            email = rng.choice(INVALID).format(n=local, i=i)
        elif draw < 0.07 and valid:
            email = f"  {rng.choice(valid).upper()} "
        else:
            email = f"{local}.{i}@{rng.choice(DOMAINS)}"
            if random_order:
                email = f"{prefixes.getrandbits(32):08x}.{email}"
            valid.append(email)
        signed_up = (
            f"20{rng.randrange(15, 26)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        )
        phone = f"+49 30 {rng.randrange(10**7):07d}"
        rows.append(
            [email, first, last, rng.choice(COMPANIES), phone, signed_up, rng.choice(NOTES)]
        )
    return rows


def crm_csv_bytes(rows: list[list[str]]) -> bytes:
    def cell(value: str) -> str:
        quoted = any(c in value for c in ',"\n')
        return '"' + value.replace('"', '""') + '"' if quoted else value

    lines = [",".join(CRM_HEADER)] + [",".join(cell(v) for v in row) for row in rows]
    return ("\r\n".join(lines) + "\r\n").encode()


def crm_xlsx_bytes(rows: list[list[str]]) -> bytes:
    return xlsx_bytes(rows, CRM_HEADER, "export")


def kept_crm_rows(rows: list[list[str]]) -> list[tuple[str, dict[str, Any]]]:
    return kept_rows(rows, lambda fields: dict(zip(CRM_KEYS, fields, strict=True)))


def csv_bytes(rows: list[list[str]]) -> bytes:
    def cell(value: str) -> str:
        return f'"{value}"' if any(c in value for c in ',"\n') else value

    lines = [",".join(HEADER)] + [",".join(cell(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def xlsx_bytes(
    rows: list[list[str]], header: list[str] = HEADER, sheet_name: str = "people"
) -> bytes:
    """The rows as a spreadsheet; a column of whole numbers (the age) as numbers."""
    import openpyxl

    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet(sheet_name)
    sheet.append(header)
    for row in rows:
        sheet.append([int(v) if v.isdigit() else v for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _people_fields(fields: list[str]) -> dict[str, Any]:
    first, last, city, age = fields
    return {"first_name": first, "last_name": last, "city": city, "age": int(age)}


def kept_rows(
    rows: list[list[str]], fields_of: Callable[[list[str]], dict[str, Any]] = _people_fields
) -> list[tuple[str, dict[str, Any]]]:
    """What an import keeps: normalised valid addresses, first row of each, file order."""
    import re

    pattern = re.compile(ADDRESS)
    seen: set[str] = set()
    kept = []
    for email, *fields in rows:
        address = email.strip().lower()
        if not pattern.match(address) or address in seen:
            continue
        seen.add(address)
        kept.append((address, fields_of(fields)))
    return kept


# ----- mailfleet through the API -----


class CompletionFeed:
    """`import.completed` as the importer publishes it (after its commit): how a service
    that imports by events learns the end, and no status polling to load the machine
    while it is measured."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )

    async def start(self) -> None:
        await self.consumer.start()
        topic = Topic.IMPORT_COMPLETED.value
        partitions = self.consumer.partitions_for_topic(topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()  # noqa: SLF001
            partitions = self.consumer.partitions_for_topic(topic) or set()
        self.consumer.assign([TopicPartition(topic, p) for p in partitions])

    async def skip_to_end(self) -> None:
        await self.consumer.seek_to_end()
        for partition in self.consumer.assignment():
            await self.consumer.position(partition)  # resolve "end" now, not at first fetch

    async def wait(self, import_id: str) -> ImportProgress:
        while True:
            batches = await self.consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    event = ImportProgress.model_validate_json(record.value or b"")
                    if str(event.import_id) == import_id:
                        return event

    async def stop(self) -> None:
        await self.consumer.stop()


async def api_import(
    stack: RunningStack, feed: CompletionFeed, list_id: str, content: bytes, filename: str
) -> tuple[float, dict[str, Any]]:
    """Seconds from the start of the upload to `import.completed`, and the final import
    (its `upload_s`: seconds until the API answered 202, the file stored)."""
    async with httpx.AsyncClient(
        base_url=f"{stack.api_url}/api/v1",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=600,
    ) as http:
        await feed.skip_to_end()
        started = time.perf_counter()
        answer = await http.post(
            f"/lists/{list_id}/imports", files={"file": (filename, content, "text/csv")}
        )
        assert answer.status_code == 202, answer.text
        uploaded = time.perf_counter() - started
        import_id = answer.json()["id"]
        await asyncio.wait_for(feed.wait(import_id), 600)
        elapsed = time.perf_counter() - started
        job = (await http.get(f"/imports/{import_id}")).json()
    assert job["status"] == "completed", job
    job["upload_s"] = uploaded
    return elapsed, job


async def import_stages(conn: asyncpg.Connection, import_id: str) -> str:
    """Where the time went, from the database's clock: the upload's end (the request
    row), the importer's start and its finish (before the commit)."""
    row = await conn.fetchrow(
        "SELECT extract(epoch FROM j.started_at - r.requested_at) AS waiting,"
        " extract(epoch FROM j.finished_at - j.started_at) AS running"
        " FROM import_requests r JOIN import_jobs j ON j.id = r.id WHERE r.id = $1",
        uuid.UUID(import_id),
    )
    return f"queued {row['waiting']:.2f} s, importing {row['running']:.2f} s"


async def new_list(conn: asyncpg.Connection, name: str) -> str:
    return str(await conn.fetchval("INSERT INTO lists (name) VALUES ($1) RETURNING id", name))


# ----- the ceiling: bare COPY -----


async def bare_copy(
    conn: asyncpg.Connection, kept: list[tuple[str, dict[str, Any]]], *, by_address: bool
) -> float:
    table = f"bench_copy_{uuid.uuid4().hex[:8]}"
    list_id = uuid.UUID(await new_list(conn, "bench ceiling"))
    # Columns, collations, defaults, identity and indexes of `recipients` (which has no
    # foreign key since migration 0008: writers lock the list once instead).
    await conn.execute(f"CREATE TABLE {table} (LIKE recipients INCLUDING ALL)")
    records = [(list_id, email, fields) for email, fields in kept]
    if by_address:
        records.sort(key=lambda r: r[1])
    await conn.execute("CHECKPOINT")
    started = time.perf_counter()
    await conn.copy_records_to_table(
        table, records=records, columns=["list_id", "email", "fields"], timeout=3600
    )
    elapsed = time.perf_counter() - started
    await conn.execute(f"DROP TABLE {table}")
    return elapsed


# ----- the baseline: pandas + COPY + upsert -----


def pandas_frame(path: Path, spreadsheet: bool) -> Any:
    import pandas as pd

    if spreadsheet:
        frame = pd.read_excel(path, engine="openpyxl", dtype=str, keep_default_na=False)
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["email"] = frame["email"].str.strip().str.lower()
    frame = frame[frame["email"].str.match(ADDRESS)]
    frame = frame.drop_duplicates(subset="email", keep="first")
    frame["age"] = pd.to_numeric(frame["age"])
    return frame


async def pandas_import(conn: asyncpg.Connection, path: Path, spreadsheet: bool) -> float:
    list_id = uuid.UUID(await new_list(conn, "bench pandas"))
    await conn.execute("CHECKPOINT")
    started = time.perf_counter()
    frame = await asyncio.to_thread(pandas_frame, path, spreadsheet)
    records = [
        (list_id, row["email"], {k: row[k] for k in HEADER[1:]}) for row in frame.to_dict("records")
    ]
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE bench_stage (list_id uuid, email text, fields jsonb) ON COMMIT DROP"
        )
        await conn.copy_records_to_table("bench_stage", records=records, timeout=3600)
        await conn.execute(
            "INSERT INTO recipients (list_id, email, fields) SELECT * FROM bench_stage"
            " ON CONFLICT (list_id, email) DO UPDATE SET fields = EXCLUDED.fields",
            timeout=3600,
        )
    return time.perf_counter() - started


# ----- the run -----


def line(label: str, rows: int, seconds: float, note: str = "") -> None:
    print(f"  {label:58} {seconds:8.2f} s {rows / seconds:>11,.0f} rows/s  {note}")


def versions() -> str:
    import importlib.metadata as md

    names = ("pyarrow", "python-calamine", "asyncpg", "pandas", "openpyxl", "numpy")
    return ", ".join(f"{name} {md.version(name)}" for name in names)


async def peak_rss_mib(pid: int) -> float:
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        if entry.startswith("VmHWM:"):
            return int(entry.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def crm_export(
    stack: RunningStack,
    feed: CompletionFeed,
    conn: asyncpg.Connection,
    csv_n: int,
    xlsx_n: int,
    random_order: bool,
) -> None:
    """The CRM-shaped files: mailfleet against the bare COPY of the rows it kept."""
    for label, n, make, filename in (
        ("CSV", csv_n, crm_csv_bytes, "crm-export.csv"),
        ("XLSX", xlsx_n, crm_xlsx_bytes, "crm-export.xlsx"),
    ):
        if not n:
            continue
        rows = make_crm_rows(n, seed=13 if label == "CSV" else 17, random_order=random_order)
        data, kept = make(rows), kept_crm_rows(rows)
        print(
            f"\nCRM export, {label}, {n:,} rows x {len(CRM_HEADER)} columns, "
            f"{len(data) / 2**20:.1f} MiB, {len(kept):,} to keep"
            + (", addresses in random order" if random_order else "")
        )
        await conn.execute("CHECKPOINT")
        seconds, job = await api_import(
            stack, feed, await new_list(conn, f"bench crm {label}"), data, filename
        )
        assert job["rows_imported"] == len(kept), (job["rows_imported"], len(kept))
        assert job["rows_duplicate"] == dupes(rows), (job["rows_duplicate"], dupes(rows))
        assert job["rows_rejected"] == n - len(kept) - dupes(rows), job
        stages = await import_stages(conn, job["id"])
        line(
            "mailfleet: upload -> completed, new list",
            n,
            seconds,
            f"(upload {job['upload_s']:.2f} s, {stages})",
        )
        line(
            "ceiling: bare binary COPY, file order",
            n,
            await bare_copy(conn, kept, by_address=False),
        )


def dupes(rows: list[list[str]]) -> int:
    """Rows whose address is valid but came earlier in the file (skipped, not rejected)."""
    import re

    pattern = re.compile(ADDRESS)
    seen: set[str] = set()
    count = 0
    for row in rows:
        address = row[0].strip().lower()
        if pattern.match(address):
            count += address in seen
            seen.add(address)
    return count


async def run(
    rows_n: int,
    xlsx_n: int,
    memory_n: int,
    work: Path,
    crm_n: int = 0,
    crm_xlsx_n: int = 0,
    crm_random_order: bool = False,
) -> None:
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    timed: Callable[[str], None] = lambda s: print(f"[{time.strftime('%X')}] {s}", flush=True)  # noqa: E731

    timed(f"generating {rows_n:,} CSV rows and {xlsx_n:,} XLSX rows")
    rows = make_rows(rows_n)
    data = csv_bytes(rows)
    kept = kept_rows(rows)
    xlsx_rows = make_rows(xlsx_n, seed=11)
    xlsx = xlsx_bytes(xlsx_rows)
    xlsx_kept = kept_rows(xlsx_rows)
    csv_path, xlsx_path = work / "people.csv", work / "people.xlsx"
    csv_path.write_bytes(data)
    xlsx_path.write_bytes(xlsx)
    print(
        f"CSV: {rows_n:,} rows, {len(data) / 2**20:.1f} MiB, {len(kept):,} to keep; "
        f"XLSX: {xlsx_n:,} rows, {len(xlsx) / 2**20:.1f} MiB, {len(xlsx_kept):,} to keep"
    )

    infra = BenchInfrastructure(work)
    bootstrap, dsn = await infra.start()
    # The 5M-row file is larger than the default upload limit (200 MB).
    env = {"MAILFLEET_LOG_LEVEL": "WARNING", "MAILFLEET_MAX_UPLOAD_BYTES": str(2**31)}
    stack = await start_stack(dsn, bootstrap, work / "logs", env=env)
    conn = await asyncpg.connect(dsn)
    await db._init_connection(conn)  # noqa: SLF001 - the services' jsonb codec
    feed = CompletionFeed(bootstrap)
    await feed.start()
    try:
        # Warm up (first-import code paths, connections) with a small file.
        await api_import(
            stack, feed, await new_list(conn, "warm-up"), csv_bytes(rows[:1000]), "w.csv"
        )

        print(f"\nCSV, {rows_n:,} rows")
        timed("mailfleet, new list")
        list_id = await new_list(conn, "bench csv")
        await conn.execute("CHECKPOINT")
        seconds, job = await api_import(stack, feed, list_id, data, "people.csv")
        assert job["rows_imported"] == len(kept), (job, len(kept))
        stages = await import_stages(conn, job["id"])
        results = [
            (
                "mailfleet: upload -> completed, new list (API, importer)",
                seconds,
                f"(upload {job['upload_s']:.2f} s, {stages})",
            )
        ]
        timed("mailfleet, same file again into the same list")
        await conn.execute("CHECKPOINT")
        seconds, job = await api_import(stack, feed, list_id, data, "people.csv")
        assert job["rows_imported"] == 0 and job["rows_updated"] == len(kept), job
        results.append(("mailfleet: same file again (every row an update)", seconds, ""))
        timed("bare COPY")
        results.append(
            (
                "ceiling: bare binary COPY, file order",
                await bare_copy(conn, kept, by_address=False),
                "",
            )
        )
        results.append(
            (
                "ceiling: bare binary COPY, sorted by address",
                await bare_copy(conn, kept, by_address=True),
                "",
            )
        )
        timed("pandas baseline")
        results.append(
            (
                "baseline: pandas read_csv + COPY + upsert",
                await pandas_import(conn, csv_path, False),
                "",
            )
        )
        for label, secs, note in results:
            line(label, rows_n, secs, note)

        print(f"\nXLSX, {xlsx_n:,} rows")
        timed("mailfleet XLSX")
        seconds, job = await api_import(
            stack, feed, await new_list(conn, "bench xlsx"), xlsx, "people.xlsx"
        )
        assert job["rows_imported"] == len(xlsx_kept), (job, len(xlsx_kept))
        xresults = [("mailfleet: upload -> completed, new list", seconds, "")]
        xresults.append(
            (
                "ceiling: bare binary COPY, file order",
                await bare_copy(conn, xlsx_kept, by_address=False),
                "",
            )
        )
        timed("pandas XLSX baseline")
        xresults.append(
            (
                "baseline: pandas read_excel (openpyxl) + COPY + upsert",
                await pandas_import(conn, xlsx_path, True),
                "",
            )
        )
        for label, secs, note in xresults:
            line(label, xlsx_n, secs, note)

        await crm_export(stack, feed, conn, crm_n, crm_xlsx_n, crm_random_order)

        if memory_n:
            print(f"\nmemory, {memory_n:,} rows")
            timed("generating")
            big = csv_bytes(make_rows(memory_n, seed=3))
            timed(f"importing {len(big) / 2**20:.0f} MiB")
            seconds, job = await api_import(
                stack, feed, await new_list(conn, "bench memory"), big, "big.csv"
            )
            child = stack.supervisor.children["importer"]
            assert child.process is not None and child.starts == 1
            peak = await peak_rss_mib(child.process.pid)
            line("mailfleet: upload -> completed, new list", memory_n, seconds)
            print(f"  importer peak RSS (VmHWM, whole process life): {peak:,.0f} MiB")
    finally:
        await feed.stop()
        await conn.close()
        await stack.stop()
        await infra.drop_database()
        infra.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--xlsx-rows", type=int, default=100_000)
    parser.add_argument("--memory-rows", type=int, default=0, help="e.g. 5000000")
    parser.add_argument("--crm-rows", type=int, default=1_000_000)
    parser.add_argument("--crm-xlsx-rows", type=int, default=100_000)
    parser.add_argument(
        "--crm-random-order",
        action="store_true",
        help="CRM addresses in random order (as sorted by sign-up date), not by name",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailfleet-bench-import-") as work:
        asyncio.run(
            run(
                args.rows,
                args.xlsx_rows,
                args.memory_rows,
                Path(work),
                args.crm_rows,
                args.crm_xlsx_rows,
                args.crm_random_order,
            )
        )


if __name__ == "__main__":
    main()
