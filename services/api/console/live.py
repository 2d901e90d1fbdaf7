"""A campaign's progress pushed to its page with server-sent events.

One read of the campaign row and the tracker's counters a second per open page (no
COUNT over deliveries); an event goes out only when the rendered fragment changed. The
htmx SSE extension reconnects on its own, so a page survives an API restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from libs.stats import read_models
from libs.web.problems import ProblemError
from services.api import repository
from services.api.console import queries, sessions, users_repo
from services.api.console.auth import Session, Viewer, console_state
from services.api.console.web import ConsoleRoute
from services.api.keys import Role

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

UPDATE_EVERY_S = 1.0
# A campaign that has ended changes only through provider events (opens, bounces): slower.
ENDED_EVERY_S = 5.0
ENDED = ("completed", "failed", "cancelled")
# An open stream re-checks its session this often: signing out, disabling the user or the
# session's timeouts end the stream too (watching is not activity: it does not extend it).
RECHECK_SESSION_S = 30.0
# The emails/s shown is the average over this many seconds (samples are a second apart).
RATE_WINDOW = 5


class RateMeter:
    """Emails/s from successive `sent` counts. Pure."""

    def __init__(self, window: int = RATE_WINDOW) -> None:
        self.samples: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def add(self, at: float, sent: int) -> float | None:
        self.samples.append((at, sent))
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        return round((s1 - s0) / (t1 - t0), 1) if t1 > t0 else None


def _fragment(
    request: Request,
    session: Session,
    row: dict[str, Any] | None,
    counters: Any,
    rate: float | None,
    compact: bool,
    zones: dict[str, Any] | None = None,
) -> str:
    state = console_state(request)
    template = state.templates.env.get_template("_progress.html")
    return template.render(
        campaign=row,
        progress=queries.progress_of(counters),
        rate=rate,
        session=session,
        can_edit=session.may(Role.EDITOR) and not compact,
        compact=compact,
        zone_plan=zones,
        csrf=sessions.csrf_token(state.secret, session.token),
        timezone=session.timezone,
    )


async def _session_valid(request: Request, session: Session) -> bool:
    state = console_state(request)
    found = await users_repo.find_session(
        request.app.state.resources.db, sessions.token_hash(session.token)
    )
    return found is not None and not sessions.expired(
        found["created_at"], found["last_seen_at"], state.clock(), state.timeouts
    )


class SessionWatch:
    """An open stream's session, re-checked every RECHECK_SESSION_S (not on every update)."""

    def __init__(self, request: Request, session: Session) -> None:
        self.request, self.session = request, session
        self.checked = time.monotonic()

    async def still_valid(self) -> bool:
        if time.monotonic() - self.checked <= RECHECK_SESSION_S:
            return True
        self.checked = time.monotonic()
        return await _session_valid(self.request, self.session)


@router.get("/campaigns/{campaign_id}/live")
async def live(request: Request, session: Viewer, campaign_id: UUID) -> EventSourceResponse:
    if not await repository.campaign_exists(request.app.state.resources.db, campaign_id):
        raise ProblemError(404, "There is no such campaign.")

    async def updates() -> AsyncIterator[dict[str, str]]:
        meter = RateMeter()
        last = ""
        db = request.app.state.resources.db
        watch = SessionWatch(request, session)
        while await watch.still_valid():
            row = await repository.get_campaign(db, campaign_id)
            counters = await read_models.campaign_counters(db, campaign_id)
            rate = meter.add(time.monotonic(), int(counters["sent"]) if counters else 0)
            zones = await queries.zones_of(db, row)
            html = _fragment(request, session, row, counters, rate, compact=False, zones=zones)
            if html != last:
                last = html
                yield {"event": "progress", "data": html}
            ended = row is None or row["status"] in ENDED
            await asyncio.sleep(ENDED_EVERY_S if ended else UPDATE_EVERY_S)

    return EventSourceResponse(updates(), ping=15)


@router.get("/live")
async def dashboard_live(request: Request, session: Viewer) -> EventSourceResponse:
    """Every running campaign of the dashboard over one stream, an event per campaign
    (`progress-<id>`). One stream per card would not do: a browser opens at most six
    connections to a host over HTTP/1.1, so a dashboard with six running campaigns held
    them all and the next page the person opened never loaded."""
    db = request.app.state.resources.db
    campaign_ids = [c["id"] for c in await queries.running_campaigns(db)]

    async def updates() -> AsyncIterator[dict[str, str]]:
        meters = {cid: RateMeter() for cid in campaign_ids}
        last: dict[UUID, str] = {}
        watch = SessionWatch(request, session)
        while await watch.still_valid():
            rows = await queries.campaigns_by_id(db, campaign_ids)
            counters = await queries.counters_by_campaign(db, campaign_ids)
            now = time.monotonic()
            for cid in campaign_ids:
                found = counters.get(cid)
                rate = meters[cid].add(now, int(found["sent"]) if found else 0)
                html = _fragment(request, session, rows.get(cid), found, rate, compact=True)
                if html != last.get(cid):
                    last[cid] = html
                    yield {"event": f"progress-{cid}", "data": html}
            ended = all(r["status"] in ENDED for r in rows.values())
            await asyncio.sleep(ENDED_EVERY_S if ended else UPDATE_EVERY_S)

    return EventSourceResponse(updates(), ping=15)
