"""A local SendGrid: accepts `/v3/mail/send` like the real API, validates, and records.

`mailfleet dev` runs it so mail is "sent" without an account; the tests send to it and ask it
what arrived. Every payload is checked against SendGrid's documented limits (400 with
SendGrid-style errors). Faults can be injected (`POST /sink/faults`) to test retries.

    GET    /sink/messages?limit=100&email=&campaign_id=   recent accepted messages, rendered
    GET    /sink/stats                                    counts, duplicates included
    POST   /sink/faults  {"status": 500, "count": 2, "delay_s": 0, "retry_after_s": null}
    DELETE /sink/faults | /sink/messages                  clear

A fault with status 202 and a delay accepts and records the request first, then holds its
answer for `delay_s`: a provider that took the mail but answered after the client's
timeout. Any other fault waits `delay_s`, then answers its status without recording.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from libs.common.logging import configure, get_logger
from libs.mail.messages import apply_substitutions
from libs.mail.sendgrid_limits import MAX_REQUEST_BYTES, validate_mail_send

log = get_logger(__name__)

_UNAUTHORIZED = {
    "errors": [
        {
            "message": "The provided authorization grant is invalid, expired, or revoked",
            "field": None,
            "help": None,
        }
    ]
}


@dataclass(frozen=True)
class SinkRequest:
    """The shared part of one accepted request."""

    message_id: str
    from_email: str
    subject: str
    text: str
    html: str
    # Whether SendGrid would add its own open pixel or rewrite links for click tracking
    # (both on unless the request's `tracking_settings` switch them off).
    provider_tracking: bool = True


@dataclass(frozen=True)
class SinkMessage:
    """One accepted recipient. Bodies are rendered on demand: the request's content is
    stored once, which keeps a million recorded recipients affordable."""

    email: str
    custom_args: dict[str, str]
    headers: dict[str, str]
    substitutions: dict[str, str]
    subject_override: str | None
    request: SinkRequest
    # When the sink accepted it (time.monotonic(), in the sink's process): latency benches.
    received_at: float = 0.0

    @property
    def message_id(self) -> str:
        return self.request.message_id

    @property
    def subject(self) -> str:
        return apply_substitutions(
            self.subject_override or self.request.subject, self.substitutions
        )

    @property
    def html(self) -> str:
        return apply_substitutions(self.request.html, self.substitutions)

    @property
    def text(self) -> str:
        return apply_substitutions(self.request.text, self.substitutions)

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "from": self.request.from_email,
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "headers": self.headers,
            "custom_args": self.custom_args,
            "message_id": self.message_id,
        }


def _provider_tracking(settings: dict[str, Any]) -> bool:
    """SendGrid's account default is taken as on: tracking is off only when asked."""
    clicks = (settings.get("click_tracking") or {}).get("enable", True)
    opens = (settings.get("open_tracking") or {}).get("enable", True)
    return bool(clicks or opens)


@dataclass
class Fault:
    status: int
    count: int
    delay_s: float = 0.0
    retry_after_s: float | None = None


@dataclass
class SinkState:
    keep_messages: int | None = None
    messages: deque[SinkMessage] = field(default_factory=deque)
    # Recipients accepted: campaign id -> lower-cased address -> count. Dicts of strings
    # and ints, which the garbage collector never walks (a Counter of tuples of a
    # 10M-recipient run made every request of this sink 60 % dearer). See `received`.
    _received: dict[str, dict[str, int]] = field(default_factory=dict)
    requests: int = 0
    accepted_requests: int = 0
    rejected_requests: int = 0
    faults_served: int = 0
    faults: list[Fault] = field(default_factory=list)
    record_file: IO[bytes] | None = None

    def __post_init__(self) -> None:
        self.messages = deque(maxlen=self.keep_messages)

    def next_fault(self) -> Fault | None:
        while self.faults and self.faults[0].count <= 0:
            self.faults.pop(0)
        if not self.faults:
            return None
        self.faults[0].count -= 1
        self.faults_served += 1
        return self.faults[0]

    def record(self, payload: dict[str, Any], message_id: str) -> int:
        content = {c["type"]: c["value"] for c in payload.get("content") or []}
        request = SinkRequest(
            message_id=message_id,
            from_email=payload["from"]["email"],
            subject=payload.get("subject") or "",
            text=content.get("text/plain", ""),
            html=content.get("text/html", ""),
            provider_tracking=_provider_tracking(payload.get("tracking_settings") or {}),
        )
        now = time.monotonic()
        global_headers = payload.get("headers") or {}
        global_args = payload.get("custom_args") or {}
        global_campaign = global_args.get("campaign_id", "")
        personalizations = payload["personalizations"]
        # Only the last `keep_messages` recipients are kept (and all when recording to a
        # file): the others are counted, not built, since this sink stands for SendGrid
        # beside the benchmarks, on the same cores, and should cost them little.
        kept_from = 0
        if self.record_file is None and self.keep_messages is not None:
            kept_from = max(0, len(personalizations) - self.keep_messages)
        count = 0
        for index, item in enumerate(personalizations):
            own_args = item.get("custom_args")
            campaign = own_args.get("campaign_id", global_campaign) if own_args else global_campaign
            counts = self._received.setdefault(campaign, {})
            for kind in ("to", "cc", "bcc"):
                for address in item.get(kind) or []:
                    count += 1
                    email = address["email"].lower()
                    counts[email] = counts.get(email, 0) + 1
                    if index < kept_from:
                        continue
                    message = SinkMessage(
                        email=address["email"],
                        custom_args={**global_args, **(own_args or {})},
                        headers={**global_headers, **(item.get("headers") or {})},
                        substitutions=item.get("substitutions") or {},
                        subject_override=item.get("subject"),
                        request=request,
                        received_at=now,
                    )
                    self.messages.append(message)
                    if self.record_file is not None:
                        self.record_file.write(orjson.dumps(message.as_json()) + b"\n")
        if self.record_file is not None:
            self.record_file.flush()
        return count

    @property
    def received(self) -> Counter[tuple[str, str]]:
        """How many times each (campaign id, lower-cased address) was accepted."""
        return Counter(
            {(campaign, email): n for campaign, counts in self._received.items()
             for email, n in counts.items()}
        )  # fmt: skip

    def received_in(self, campaign_id: str) -> dict[str, int]:
        """How many times each lower-cased address was accepted for one campaign."""
        return dict(self._received.get(campaign_id, {}))

    def stats(self) -> dict[str, int]:
        messages = sum(sum(counts.values()) for counts in self._received.values())
        unique = sum(len(counts) for counts in self._received.values())
        return {
            "requests": self.requests,
            "accepted_requests": self.accepted_requests,
            "rejected_requests": self.rejected_requests,
            "faults_served": self.faults_served,
            "messages": messages,
            "unique_recipients": unique,
            "duplicates": messages - unique,
        }

    def clear(self) -> None:
        self.messages.clear()
        self._received.clear()
        self.requests = self.accepted_requests = self.rejected_requests = 0
        self.faults_served = 0


STATE = web.AppKey("state", SinkState)


def _errors(status: int, message: str, field_name: str | None = None) -> web.Response:
    body = {"errors": [{"message": message, "field": field_name, "help": None}]}
    return web.json_response(body, status=status)


async def _mail_send(request: web.Request) -> web.Response:
    state: SinkState = request.app[STATE]
    state.requests += 1
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        state.rejected_requests += 1
        return web.json_response(_UNAUTHORIZED, status=401)
    fault = state.next_fault()
    if fault is not None and fault.status != 202:
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        response = _errors(fault.status, f"injected fault {fault.status}")
        if fault.retry_after_s is not None:
            response.headers["Retry-After"] = str(fault.retry_after_s)
        return response
    response = await _accept(state, request)
    if fault is not None and fault.delay_s:
        await asyncio.sleep(fault.delay_s)  # accepted and recorded; the answer is late
    return response


async def _accept(state: SinkState, request: web.Request) -> web.Response:
    body = await request.read()
    if len(body) > MAX_REQUEST_BYTES:
        state.rejected_requests += 1
        return _errors(413, "The total size of your email must be less than 30MB.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        state.rejected_requests += 1
        return _errors(400, "Bad Request: the body is not valid JSON.")
    problems = validate_mail_send(payload, len(body))
    if problems:
        state.rejected_requests += 1
        return web.json_response({"errors": [p.as_json() for p in problems]}, status=400)
    message_id = secrets.token_urlsafe(16)[:22]
    state.record(payload, message_id)
    state.accepted_requests += 1
    return web.Response(status=202, headers={"X-Message-Id": message_id})


async def _messages(request: web.Request) -> web.Response:
    state: SinkState = request.app[STATE]
    try:
        limit = max(0, int(request.query.get("limit", "100")))
    except ValueError:
        return _errors(400, "limit must be an integer", "limit")
    email = request.query.get("email", "").lower()
    campaign = request.query.get("campaign_id", "")
    found: list[dict[str, Any]] = []
    for message in reversed(state.messages):
        if len(found) >= limit:
            break
        if email and message.email.lower() != email:
            continue
        if campaign and message.custom_args.get("campaign_id") != campaign:
            continue
        found.append(message.as_json())
    return web.json_response(found)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


async def _add_fault(request: web.Request) -> web.Response:
    try:
        spec = await request.json()
        fault = Fault(
            status=int(spec.get("status", 500)),
            count=int(spec.get("count", 1)),
            delay_s=float(spec.get("delay_s", 0)),
            retry_after_s=(
                float(spec["retry_after_s"]) if spec.get("retry_after_s") is not None else None
            ),
        )
    except (ValueError, TypeError, AttributeError):
        return _errors(400, "expected {status, count, delay_s, retry_after_s}")
    request.app[STATE].faults.append(fault)
    return web.json_response({"queued": len(request.app[STATE].faults)}, status=201)


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults.clear()
    return web.Response(status=204)


async def _clear_messages(request: web.Request) -> web.Response:
    request.app[STATE].clear()
    return web.Response(status=204)


def create_app(state: SinkState) -> web.Application:
    # SendGrid accepts up to 30 MB; aiohttp's default body limit is 1 MB.
    app = web.Application(client_max_size=MAX_REQUEST_BYTES + 1024 * 1024)
    app[STATE] = state
    app.router.add_post("/v3/mail/send", _mail_send)
    app.router.add_get("/sink/messages", _messages)
    app.router.add_delete("/sink/messages", _clear_messages)
    app.router.add_get("/sink/stats", _stats)
    app.router.add_post("/sink/faults", _add_fault)
    app.router.add_delete("/sink/faults", _clear_faults)
    return app


@dataclass
class SinkHandle:
    url: str
    state: SinkState
    runner: web.AppRunner

    @property
    def messages(self) -> list[SinkMessage]:
        return list(self.state.messages)

    def stats(self) -> dict[str, int]:
        return self.state.stats()

    def inject_fault(
        self, status: int, count: int = 1, delay_s: float = 0.0, retry_after_s: float | None = None
    ) -> None:
        self.state.faults.append(Fault(status, count, delay_s, retry_after_s))

    async def stop(self) -> None:
        await self.runner.cleanup()
        if self.state.record_file is not None:
            self.state.record_file.close()


async def start_sink(
    host: str = "127.0.0.1",
    port: int = 0,
    record_path: str | Path | None = None,
    keep_messages: int | None = None,
) -> SinkHandle:
    """Start the sink in this event loop (port 0 = any free port; see `handle.url`).

    `keep_messages` bounds the messages kept in memory (the newest); counts cover all.
    """
    state = SinkState(keep_messages=keep_messages)
    if record_path is not None:
        state.record_file = open(record_path, "ab")  # noqa: SIM115 - closed by stop()
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return SinkHandle(url=f"http://{host}:{bound}", state=state, runner=runner)


def run_sink() -> None:
    """Run the sink until interrupted (MAILFLEET_SINK_PORT, MAILFLEET_SINK_RECORD,
    MAILFLEET_SINK_HOST, MAILFLEET_SINK_KEEP: messages kept in memory, default 100000)."""
    configure("sink", os.environ.get("MAILFLEET_LOG_LEVEL", "INFO"))
    host = os.environ.get("MAILFLEET_SINK_HOST", "127.0.0.1")
    port = int(os.environ.get("MAILFLEET_SINK_PORT", "8025"))
    record = os.environ.get("MAILFLEET_SINK_RECORD") or None
    keep = int(os.environ.get("MAILFLEET_SINK_KEEP", "100000"))

    async def serve() -> None:
        handle = await start_sink(host, port, record, keep_messages=keep)
        log.info("sink listening", url=handle.url, record=record)
        try:
            await asyncio.Event().wait()
        finally:
            await handle.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    run_sink()
