"""Bounce poller wiring: read DSNs and ARF reports from the bounce mailbox over IMAP, publish
them as `delivery.event`, move each mail away once its events are published."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from libs.common.events import DeliveryEvent, Topic
from libs.common.logging import get_logger
from libs.common.service import ServiceContext, run_service
from libs.common.settings import get_settings
from services.bounces import metrics
from services.bounces.mailbox import BounceMailbox, MailboxConfig
from services.bounces.reports import NotAReport, parse_report

log = get_logger(__name__)

NO_MAILBOX = "MAILFLEET_BOUNCE_IMAP_HOST is not set: there is no bounce mailbox to poll"


@dataclass
class PollResult:
    reports: int = 0
    unparsed: int = 0
    events: int = 0


def partition_key(event: DeliveryEvent) -> str:
    # The webhook's rule: a campaign's events meet in one tracker, the rest spread by address.
    return str(event.campaign_id) if event.campaign_id is not None else event.email.lower()


async def poll_once(ctx: ServiceContext, mailbox: BounceMailbox) -> PollResult:
    """Read every waiting mail once: publish, then move (at least once; the tracker dedupes)."""
    settings = ctx.settings
    result = PollResult()
    for uid in await mailbox.waiting():
        raw = await mailbox.fetch(uid)
        if raw is None:
            continue
        try:
            events = parse_report(raw, settings.secret_key)
        except NotAReport as exc:
            log.warning("bounce mailbox: not a report; moved aside", uid=uid, reason=str(exc))
            await mailbox.move(uid, settings.bounce_unparsed_folder)
            result.unparsed += 1
            metrics.MAILS_READ.labels("unparsed").inc()
            continue
        await ctx.producer.send_many(Topic.DELIVERY_EVENT, [(partition_key(e), e) for e in events])
        await mailbox.move(uid, settings.bounce_processed_folder)
        result.reports += 1
        result.events += len(events)
        metrics.MAILS_READ.labels("report").inc()
        for event in events:
            metrics.EVENTS_PUBLISHED.labels(event.event).inc()
            log.info(
                "bounce report read",
                kind=event.event,
                campaign_id=str(event.campaign_id) if event.campaign_id else None,
                recipient_id=event.recipient_id,
                bounce_type=event.detail.get("type"),
            )
    return result


async def main(ctx: ServiceContext) -> None:
    """Poll until `ctx.stop` is set; a failed poll (server down, login refused) is logged and
    tried again at the next interval with a fresh connection."""
    settings = ctx.settings
    if not settings.bounce_imap_host:
        raise SystemExit(NO_MAILBOX)
    if not settings.secret_key:
        log.warning("MAILFLEET_SECRET_KEY not set: VERP tokens cannot be checked; Message-ID only")
    metrics.start_series()
    config = MailboxConfig.from_settings(settings)
    while not ctx.stop.is_set():
        mailbox = BounceMailbox(config)
        try:
            await mailbox.open()
            polled = await poll_once(ctx, mailbox)
            if polled.reports or polled.unparsed:
                log.info("bounce mailbox polled", **vars(polled))
        except Exception as exc:
            metrics.POLL_FAILURES.inc()
            log.warning("bounce mailbox poll failed; retrying", error=repr(exc))
        finally:
            await mailbox.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), settings.bounce_poll_seconds)


def run() -> None:
    settings = get_settings()
    if not settings.bounce_imap_host:  # before connecting to anything: a clear message
        raise SystemExit(NO_MAILBOX)
    asyncio.run(run_service("bounces", main, settings))
