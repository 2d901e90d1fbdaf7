"""The per-recipient headers and correlation ids every message carries."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from uuid import UUID

from libs.common.unsubscribe import unsubscribe_url


@dataclass(frozen=True)
class HeaderPolicy:
    public_base_url: str
    secret_key: str
    unsubscribe_mailto: str = ""
    # Appended to HTML bodies without {{ unsubscribe_url }} (rendering); "" = none (tests).
    unsubscribe_footer: str = ""

    def unsubscribe_link(self, campaign_id: UUID, recipient_id: int) -> str:
        return unsubscribe_url(self.public_base_url, self.secret_key, campaign_id, recipient_id)

    def headers(
        self,
        campaign_id: UUID,
        recipient_id: int,
        from_email: str,
        list_id: UUID | None = None,
        *,
        link: str | None = None,
    ) -> dict[str, str]:
        """`link`: this recipient's `unsubscribe_link`, when the caller has it already (one
        HMAC per recipient, not two)."""
        if link is None:
            link = self.unsubscribe_link(campaign_id, recipient_id)
        targets = [f"<{link}>"]
        if self.unsubscribe_mailto:
            targets.append(f"<mailto:{self.unsubscribe_mailto}?subject=unsubscribe>")
        return {
            "List-Unsubscribe": ", ".join(targets),
            # RFC 8058: mailbox providers may POST this body to the URL, with no user prompt.
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Message-ID": message_id(campaign_id, recipient_id, from_email),
            **_list_headers(campaign_id, from_email, list_id),  # the same for a campaign
        }


@functools.lru_cache(maxsize=256)
def _list_headers(campaign_id: UUID, from_email: str, list_id: UUID | None) -> dict[str, str]:
    return list_headers(campaign_id, from_email, list_id)


def list_headers(campaign_id: UUID, from_email: str, list_id: UUID | None) -> dict[str, str]:
    """RFC 2919 List-Id and Gmail's Feedback-ID, whose feedback loop reports complaint rates
    per identifier: campaign, list, then the stable sender id last."""
    domain = from_email.rsplit("@", 1)[-1].lower() or "mailfleet.invalid"
    # The recipient list is the mailing list: filters and unsubscribe UIs group by it.
    list_name = list_id.hex if list_id is not None else "mailfleet"
    return {
        "List-Id": f"<{list_name}.lists.{domain}>",
        "Feedback-ID": f"{campaign_id.hex}:{list_name}:mailfleet:{domain}",
    }


def message_id(campaign_id: UUID, recipient_id: int, from_email: str) -> str:
    # Stable per campaign and recipient: unique per message, and a re-send in at-least-once
    # mode carries the same id, so receiving systems can drop the duplicate.
    domain = from_email.rsplit("@", 1)[-1] or "mailfleet.invalid"
    return f"<mf.{campaign_id.hex}.{recipient_id}@{domain}>"


def custom_args(campaign_id: UUID | str, recipient_id: int, batch_id: str) -> dict[str, str]:
    """Returned by the provider with its webhook events, to correlate them with a recipient."""
    return {
        "campaign_id": str(campaign_id),
        "recipient_id": str(recipient_id),
        "batch_id": batch_id,
    }


UNSUBSCRIBE_HEADERS = ("List-Unsubscribe", "List-Unsubscribe-Post")


@dataclass(frozen=True)
class EssentialHeaderPolicy(HeaderPolicy):
    """Headers of an essential transactional message (a receipt, a password reset): no
    List-Unsubscribe (nobody can opt out of them, RFC 8058 is for bulk mail) and no
    unsubscribe footer; the correlation ids stay."""

    unsubscribe_footer: str = ""

    def headers(
        self,
        campaign_id: UUID,
        recipient_id: int,
        from_email: str,
        list_id: UUID | None = None,
        *,
        link: str | None = None,
    ) -> dict[str, str]:
        headers = super().headers(campaign_id, recipient_id, from_email, list_id, link=link)
        for name in UNSUBSCRIBE_HEADERS:
            headers.pop(name, None)
        return headers
