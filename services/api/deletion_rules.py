"""When a list or a campaign may be deleted. Pure: the counts come from the repository."""

from __future__ import annotations

from collections.abc import Mapping

# A campaign in one of these states reads its list now or soon.
ACTIVE_STATUSES = ("scheduled", "in_progress", "paused")
DELETABLE_CAMPAIGN_STATUS = "draft"


def why_list_is_kept(campaigns_by_status: Mapping[str, int], pending_imports: int) -> str | None:
    """The reason the list cannot be deleted now, or None when it can.

    Lists that campaigns were sent to are kept: their recipients are what the unsubscribe
    links in those mails point at, and those links must keep working.
    """
    active = sum(campaigns_by_status.get(s, 0) for s in ACTIVE_STATUSES)
    if active:
        return (
            f"{active} campaign(s) of this list are scheduled or sending; "
            "unschedule or cancel them first"
        )
    if pending_imports:
        return f"{pending_imports} import(s) into this list are still running; wait for them"
    drafts = campaigns_by_status.get(DELETABLE_CAMPAIGN_STATUS, 0)
    sent = sum(campaigns_by_status.values()) - drafts
    if sent:
        return (
            f"{sent} campaign(s) were sent to this list; it is kept so that the unsubscribe "
            "links in those mails keep working"
        )
    if drafts:
        return (
            f"{drafts} draft campaign(s) use this list; delete them or move them to "
            "another audience (PATCH list_id or audience) first"
        )
    return None


def why_campaign_is_kept(status: str) -> str | None:
    if status == DELETABLE_CAMPAIGN_STATUS:
        return None
    if status == "scheduled":
        return "the campaign is scheduled; unschedule it first, then delete the draft"
    return (
        f"the campaign is {status}; only drafts can be deleted (a campaign that started is "
        "kept for its stats and its unsubscribe links)"
    )
