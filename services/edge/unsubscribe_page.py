"""The unsubscribe pages. Pure: HTML text only.

The edge keeps no state and reads no database, so the pages cannot show the address; the
link itself is the proof of whom it is for.
"""

from __future__ import annotations

import html

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32rem; margin: 4rem auto;">
<main><h1>{title}</h1>{body}</main></body></html>"""


def confirm_page(action_path: str) -> str:
    body = (
        "<p>Stop receiving these emails at the address this message was sent to?</p>"
        f'<form method="post" action="{html.escape(action_path)}">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return PAGE.format(title="Unsubscribe", body=body)


def done_page() -> str:
    body = "<p>You are unsubscribed: this address will get no more mail from us.</p>"
    return PAGE.format(title="Unsubscribed", body=body)


def message_page(title: str, text: str) -> str:
    """A page that only says something (a tracking link that is not valid)."""
    return PAGE.format(title=html.escape(title), body=f"<p>{html.escape(text)}</p>")
