"""The ASGI layer around every request: request id, access log, metrics, body limit, 500s.

Pure ASGI (not BaseHTTPMiddleware) so that uploads stream through untouched.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common import db
from libs.common.logging import bound_contextvars, get_logger
from libs.web.problems import PROBLEM_MEDIA_TYPE, problem_body

log = get_logger(__name__)

API_REQUESTS = Counter(
    "mailfleet_api_requests_total",
    "HTTP requests answered by the API, by route template and status.",
    ["method", "route", "status"],
)
API_LATENCY = Histogram(
    "mailfleet_api_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

REQUEST_ID_HEADER = "x-request-id"
# A caller's own request id is kept only when it is short and plain (it goes into logs).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_KNOWN_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing passes it on rather than answer 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Wraps each HTTP request.

    `json_body_limit` caps bodies everywhere except paths in `streaming_paths` (uploads
    enforce their own, larger limit while they stream into the blob store).
    """

    def __init__(
        self, app: ASGIApp, *, json_body_limit: int, streaming_suffixes: tuple[str, ...]
    ) -> None:
        self.app = app
        self.json_body_limit = json_body_limit
        self.streaming_suffixes = streaming_suffixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
        status = {"code": 500, "started": False}
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        limited_receive = receive
        if not scope["path"].endswith(self.streaming_suffixes):
            limited_receive = _limit_body(receive, self.json_body_limit)

        with bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, limited_receive, send_with_id)
            except BodyTooLarge as exc:
                await _send_problem(
                    send_with_id, scope, request_id, 413, str(exc.detail), "body-too-large", status
                )
            except Exception as exc:
                if db.is_unavailable(exc):
                    # An outage, not a bug: the client may retry (issue 11, item 4).
                    log.warning("database unavailable", path=scope["path"], error=repr(exc))
                    await _send_problem(
                        send_with_id, scope, request_id, 503, _DATABASE_AWAY, "unavailable", status
                    )
                    return
                # Logged with its traceback here; the client gets a plain 500 without it.
                log.exception("unhandled error", path=scope["path"], method=method)
                await _send_problem(
                    send_with_id,
                    scope,
                    request_id,
                    500,
                    f"internal error; quote request id {request_id} when reporting it",
                    None,
                    status,
                )
            finally:
                elapsed = time.perf_counter() - started
                route = route_template(scope)
                API_REQUESTS.labels(method, route, str(status["code"])).inc()
                API_LATENCY.labels(method, route).observe(elapsed)
                log.info(
                    "request",
                    method=method,
                    route=route,
                    status=status["code"],
                    duration_ms=round(elapsed * 1000, 1),
                )


_DATABASE_AWAY = "the database is unavailable for a moment; retry shortly"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _limit_body(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return limited


async def _send_problem(
    send: Send,
    scope: Scope,
    request_id: str,
    code: int,
    detail: str,
    kind: str | None,
    status: dict[str, Any],
) -> None:
    if status["started"]:
        return  # too late to change the answer; the connection is closed by the server
    body = orjson.dumps(
        problem_body(code, detail, kind=kind, instance=scope["path"], request_id=request_id)
    )
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
