"""Security headers on HTTP responses, for the admin API and the public edge alike.

Every response gets `X-Content-Type-Options: nosniff` and a `Referrer-Policy`; HTML
responses also get a `Content-Security-Policy` (with `frame-ancestors`) and
`X-Frame-Options`, so that a page of ours can neither run injected script nor be framed
for clickjacking. A header the response sets itself wins: a page that needs a looser
policy (the API's Swagger UI loads its script from a CDN) says so where it is made.
Pure ASGI, so that streamed bodies pass through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Our own pages (the unsubscribe page) need nothing but inline styles and a form that
# posts back to us.
STRICT_HTML_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# FastAPI's /docs and /redoc pages: script and styles from jsDelivr, an inline bootstrap
# script, the FastAPI favicon, and the OpenAPI document fetched from this origin.
DOCS_HTML_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; base-uri 'none'; "
    "frame-ancestors 'none'"
)

# The admin console (services/api/console): its own vendored scripts and stylesheet, SSE
# and htmx requests to this origin, forms posting back. Its campaign preview is a sandboxed
# `srcdoc` iframe, which inherits this policy: the email's inline styles and remote images
# are allowed there (styles and images only; no script runs in the sandbox).
CONSOLE_HTML_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https:; connect-src 'self'; font-src 'self'; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

_ALWAYS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeadersMiddleware:
    """`html_policies` maps a path prefix to the CSP of its HTML pages (longest wins)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        html_policy: str = STRICT_HTML_POLICY,
        html_policies: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.html_policy = html_policy
        self.html_policies = sorted((html_policies or {}).items(), key=lambda p: -len(p[0]))

    def policy_for(self, path: str) -> str:
        for prefix, policy in self.html_policies:
            if path.startswith(prefix):
                return policy
        return self.html_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy_for(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_security_headers(message, policy)}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def with_security_headers(start: Message, html_policy: str) -> list[tuple[bytes, bytes]]:
    """The response's headers plus the security headers it does not set itself."""
    headers = list(start.get("headers", []))
    present = {name.lower() for name, _ in headers}
    wanted = list(_ALWAYS)
    content_type = next((v for n, v in headers if n.lower() == b"content-type"), b"")
    if content_type.lower().startswith(b"text/html"):
        wanted += [
            (b"content-security-policy", html_policy.encode()),
            (b"x-frame-options", b"DENY"),
        ]
    headers += [(name, value) for name, value in wanted if name not in present]
    return headers
