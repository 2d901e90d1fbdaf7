"""The pages of subscribing, confirming and the preference centre. Pure: HTML text only.

Plain server HTML: no script, no external resource (the edge's CSP allows inline styles and
forms posting back only); every value is escaped; every control has a label.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from services.edge.unsubscribe_page import PAGE


def _page(title: str, body: str) -> str:
    return PAGE.format(title=html.escape(title), body=body)


def _button_form(action: str, label: str) -> str:
    return (
        f'<form method="post" action="{html.escape(action)}">'
        f'<button type="submit">{html.escape(label)}</button></form>'
    )


def subscribe_accepted_page(opt_in: str) -> str:
    if opt_in == "double":
        text = (
            "Almost done: if this address can be subscribed, we have sent it an email with a"
            " link to confirm. The link is valid for 7 days."
        )
        return _page("Check your inbox", f"<p>{html.escape(text)}</p>")
    return _page("Thank you", "<p>Thank you: your subscription is recorded.</p>")


def confirm_page(action_path: str, list_name: str | None = None) -> str:
    what = f" to {html.escape(list_name)}" if list_name else ""
    body = f"<p>Confirm your subscription{what}?</p>" + _button_form(
        action_path, "Confirm my subscription"
    )
    return _page("Confirm your subscription", body)


def confirmed_page() -> str:
    return _page("Subscription confirmed", "<p>Thank you: your subscription is confirmed.</p>")


def expired_page() -> str:
    text = (
        "This confirmation link has expired (links are valid for 7 days). Subscribe again"
        " and we will send you a new one."
    )
    return _page("Link expired", f"<p>{html.escape(text)}</p>")


def invalid_link_page() -> str:
    text = "This link is not valid. Check that you copied all of it from the email."
    return _page("Link not valid", f"<p>{html.escape(text)}</p>")


def text_page(title: str, text: str) -> str:
    return _page(title, f"<p>{html.escape(text)}</p>")


def preference_page(
    base_path: str,
    *,
    email: str,
    list_name: str,
    status: str,
    opt_in: str,
    editable_fields: tuple[str, ...],
    fields: Mapping[str, Any],
    notice: str | None = None,
    unsubscribe_path: str | None = None,
    suppressed: bool = False,
) -> str:
    """The preference centre: leave this list or all lists, join again, edit fields.
    `base_path` is `/u/{token}`; `unsubscribe_path` the path the link was followed on."""
    parts = []
    if notice:
        parts.append(f'<p role="status"><strong>{html.escape(notice)}</strong></p>')
    parts.append(
        f"<p>Emails from <strong>{html.escape(list_name)}</strong> to"
        f" <strong>{html.escape(email)}</strong>.</p>"
    )
    if suppressed:
        parts.append(
            "<p><strong>This address is unsubscribed from all our emails.</strong> No list"
            " mails it, whatever is chosen below; to receive mail again, ask the sender.</p>"
        )
    parts.append(f"<section><h2>{html.escape(list_name)}</h2>")
    if status == "unsubscribed":
        again = "You left this list. Join it again?" + (
            " We will send you an email to confirm." if opt_in == "double" else ""
        )
        parts.append(f"<p>{html.escape(again)}</p>")
        parts.append(_button_form(f"{base_path}/join", f"Join {list_name} again"))
    else:
        parts.append(_button_form(f"{base_path}/leave", f"Leave {list_name}"))
    parts.append("</section>")
    if editable_fields:
        inputs = []
        for i, name in enumerate(editable_fields):
            value = fields.get(name)
            shown = "" if value is None else str(value)
            inputs.append(
                f'<p><label for="f{i}">{html.escape(name.replace("_", " ").capitalize())}'
                f'</label><br><input id="f{i}" name="{html.escape(name)}" maxlength="200"'
                f' value="{html.escape(shown)}"></p>'
            )
        parts.append(
            "<section><h2>Your details</h2>"
            f'<form method="post" action="{html.escape(base_path)}/preferences">'
            + "".join(inputs)
            + '<button type="submit">Save my details</button></form></section>'
        )
    parts.append(
        "<section><h2>All emails</h2><p>Stop every email from us to this address.</p>"
        + _button_form(unsubscribe_path or base_path, "Unsubscribe from all lists")
        + "</section>"
    )
    return _page("Your email preferences", "".join(parts))
