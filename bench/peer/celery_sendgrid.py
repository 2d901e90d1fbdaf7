"""The peer baseline: the architecture mailfleet replaces, run against the same sink.

Celery workers on a Redis broker; each task sends one batch of 200 recipients through the
`sendgrid` Python client (one v3 request, a personalization per recipient with its
substitutions and custom args), after a status check in Redis that makes a re-delivered
task a no-op (`SET NX` claims the batch, `sent` marks it done; a claimed but unfinished
batch is not sent twice). This is what many teams run before a dedicated system.

It runs in its own virtualenv (`.venv-celery`, `make bench-celery`, pinned in
`bench/celery-requirements.lock`): Celery pins versions of python-dateutil and packaging
that differ from mailfleet's lock, and none of it is a dependency of mailfleet.

    .venv-celery/bin/python bench/peer/celery_sendgrid.py --redis-url redis://127.0.0.1:6390/0 \
        --sink-url http://127.0.0.1:8025 --csv recipients.csv [--workers 2] [--batch-size 200]

`bench/e2e.py` runs it (it starts Redis and the sink); it prints one JSON line with the
emails/s from the first enqueue to the last batch marked sent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, Mail, Personalization, Substitution, To

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
SINK_URL = os.environ.get("PEER_SINK_URL", "http://127.0.0.1:8025")

app = Celery("peer", broker=REDIS_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,  # a task killed mid-way is re-delivered: hence the status check
    worker_prefetch_multiplier=4,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)

_clients: dict[str, Any] = {}


def _redis() -> Any:
    if "redis" not in _clients:
        _clients["redis"] = redis.Redis.from_url(REDIS_URL)
    return _clients["redis"]


def _sendgrid() -> Any:
    if "sendgrid" not in _clients:
        _clients["sendgrid"] = SendGridAPIClient(api_key="peer-bench", host=SINK_URL)
    return _clients["sendgrid"]


@app.task(name="peer.send_batch")
def send_batch(run: str, campaign_id: str, batch_no: int, recipients: list[list[str]]) -> str:
    """recipients: [email, first_name, city] rows."""
    r = _redis()
    key = f"peer:{run}:batch:{batch_no}"
    # The status check: only the first delivery of this task sends the batch.
    if not r.set(key, "sending", nx=True):
        return "skipped"
    mail = Mail(
        from_email="news@example.com",
        subject="Hello -first_name-",
        html_content="<p>Hi -first_name- from -city-</p>",
    )
    for n, (email, first_name, city) in enumerate(recipients):
        p = Personalization()
        p.add_to(To(email))
        p.add_substitution(Substitution("-first_name-", first_name))
        p.add_substitution(Substitution("-city-", city))
        p.add_custom_arg(CustomArg("campaign_id", campaign_id))
        p.add_custom_arg(CustomArg("recipient", f"{batch_no}:{n}"))
        mail.add_personalization(p)
    response = _sendgrid().send(mail)
    if response.status_code != 202:
        r.delete(key)
        raise RuntimeError(f"sink answered {response.status_code}")
    r.set(key, "sent")
    r.incrby(f"peer:{run}:sent", len(recipients))
    return "sent"


@app.task(name="peer.ready")
def ready(run: str) -> None:
    _redis().incr(f"peer:{run}:ready")


def _wait(r: Any, key: str, target: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while int(r.get(key) or 0) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} stayed below {target}")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--sink-url", required=True)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    env = {**os.environ, "PEER_REDIS_URL": args.redis_url, "PEER_SINK_URL": args.sink_url}
    with args.csv.open(newline="") as f:
        rows = [[row["email"], row["first_name"], row["city"]] for row in csv.DictReader(f)]
    run, campaign_id = uuid.uuid4().hex[:8], str(uuid.uuid4())
    worker = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "celery", "-A", "celery_sendgrid", "worker",
         "--concurrency", str(args.workers), "--pool", "prefork", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=Path(__file__).parent, env=env, stdout=subprocess.DEVNULL,  # its banner
    )  # fmt: skip
    try:
        app.conf.broker_url = args.redis_url
        r = redis.Redis.from_url(args.redis_url)
        ready.delay(run)
        _wait(r, f"peer:{run}:ready", 1, 120)  # the workers are up and consuming
        started = time.perf_counter()
        for batch_no, start in enumerate(range(0, len(rows), args.batch_size)):
            send_batch.delay(run, campaign_id, batch_no, rows[start : start + args.batch_size])
        _wait(r, f"peer:{run}:sent", len(rows), args.timeout)
        elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    print(json.dumps({"recipients": len(rows), "seconds": elapsed, "campaign_id": campaign_id,
                      "emails_per_s": len(rows) / elapsed, "workers": args.workers}))  # fmt: skip


if __name__ == "__main__":
    main()
