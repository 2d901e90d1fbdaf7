"""Serving an HTTP service's app with uvicorn, the same way for the API and the edge."""

from __future__ import annotations

from fastapi import FastAPI


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run until SIGTERM. Logs go through structlog (our request middleware), not uvicorn's.

    uvicorn's own proxy-header handling is off: the client address comes from
    MAILFLEET_TRUSTED_PROXIES alone (the API's `deps.client_of`), so one setting decides
    whom to believe."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, proxy_headers=False)
