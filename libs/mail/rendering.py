"""Turn a batch and its frozen content into what the provider sends (pure: no I/O).

Merge fields are the recipient's `fields` plus `email`. A template made only of text and
`{{ name }}` placeholders is sent as one shared body with per-recipient substitutions (HTML
values escaped, text and subject values raw); anything richer is rendered per recipient,
each message within `RenderLimits` (time and size). A message that cannot be built (its
template fails or goes past the limits, a merge field puts a line break in its subject)
fails alone: its recipient is settled `failed` with the reason, the others go out.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

import css_inline

from libs.common.events import BatchRecipient, RecipientOutcome
from libs.common.templating import (
    Placeholder,
    RenderBudget,
    RenderLimits,
    TemplatePiece,
    TemplateTooCostly,
    format_value,
    render,
    simple_template_pieces,
)
from libs.mail.headers import HeaderPolicy, custom_args
from libs.mail.html_text import html_to_text
from libs.mail.messages import (
    Message,
    Outbox,
    Sender,
    TemplatedGroup,
    TemplatedRecipient,
    is_valid_address,
)
from libs.mail.tracking import LinkTracker, templated_hrefs

# SendGrid: "the total collective size of your substitutions may not exceed 10,000 bytes
# per personalization object".
MAX_SUBSTITUTION_BYTES = 10_000
_TAG_PREFIX = "{{"

# Mail clients (Gmail among them) drop <style> blocks: rules are moved into style=""
# attributes. @media rules stay in a <style> for the clients that honour them. Remote
# stylesheets are never fetched: rendering does no I/O.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)
_HAS_CSS = re.compile(r"<style|<link", re.IGNORECASE)


def inline_css(html: str) -> str:
    """`html` with its CSS inlined; unchanged when it has no stylesheet (the inliner would
    wrap a fragment in <html><body>) or when the CSS cannot be parsed."""
    if not _HAS_CSS.search(html):
        return html
    try:
        return _INLINER.inline(html)
    except (css_inline.InlineError, ValueError):
        return html


@dataclass(frozen=True)
class Content:
    """A campaign's content as the scheduler froze it (table content_snapshots)."""

    id: UUID
    campaign_id: UUID
    subject: str
    html: str
    text: str | None
    from_email: str
    from_name: str | None
    list_id: UUID | None = None  # the campaign's recipient list (List-Id, Feedback-ID)
    # Own open and click tracking (campaigns.tracking; off for test sends and old callers).
    tracking: bool = False


def merge_fields(recipient: BatchRecipient) -> dict[str, Any]:
    return {**recipient.fields, "email": recipient.email}


def html_tag(name: str) -> str:
    return f"{{{{h:{name}}}}}"


def text_tag(name: str) -> str:
    return f"{{{{t:{name}}}}}"


class UnsafeHeader(ValueError):
    """A header value with a line break: it would end the header and start another."""


def line_break_problem(name: str, value: str | None) -> str | None:
    if value is not None and ("\r" in value or "\n" in value):
        return f"{name} contains a line break (CR or LF), which would inject mail headers"
    return None


def check_header_values(subject: str, headers: dict[str, str]) -> None:
    for name, value in (("subject", subject), *headers.items()):
        if (problem := line_break_problem(name, value)) is not None:
            raise UnsafeHeader(problem)


def render_message(
    content: Content,
    recipient: BatchRecipient,
    headers: dict[str, str],
    args: dict[str, str],
    limits: RenderLimits | None = None,
    tracker: LinkTracker | None = None,
) -> Message:
    """Raises `TemplateTooCostly` past `limits`, `UnsafeHeader`, or whatever the user's
    template raises. With `tracker`, the HTML's links are tracked and an open pixel added
    (the text part, derived before, keeps the links as they are)."""
    context = merge_fields(recipient)
    budget = RenderBudget(limits or RenderLimits())
    subject = render(content.subject, context, html=False, budget=budget)
    check_header_values(subject, headers)
    html = render(content.html, context, html=True, budget=budget)
    text = (
        render(content.text, context, html=False, budget=budget)
        if content.text
        else html_to_text(html)
    )
    html = inline_css(html)
    if tracker is not None:
        html = tracker.rewrite(html, recipient.recipient_id)
    size = sum(len(part.encode()) for part in (subject, html, text))
    budget.check_size(size, "the message")
    return Message(
        recipient_id=recipient.recipient_id,
        email=recipient.email,
        subject=subject,
        html=html,
        text=text,
        headers=headers,
        custom_args=args,
    )


def render_failure(exc: Exception) -> str:
    """The reason a recipient whose message could not be built is `failed`."""
    if isinstance(exc, TemplateTooCostly):
        return f"template too costly: {exc}"
    if isinstance(exc, UnsafeHeader):
        return str(exc)
    return f"template error: {exc}"


@dataclass(frozen=True)
class _SubstitutionTemplate:
    """The shared body of a substitution-only content, and the fields it needs."""

    subject: str
    html: str
    text: str
    text_fields: frozenset[str]
    html_fields: frozenset[str]
    subject_fields: frozenset[str]


def _join(pieces: list[TemplatePiece], tag: Any) -> str:
    return "".join(p if isinstance(p, str) else tag(p.name) for p in pieces)


def _names(pieces: list[TemplatePiece]) -> set[str]:
    return {p.name for p in pieces if isinstance(p, Placeholder)}


def _literal_has_tag(pieces: list[TemplatePiece]) -> bool:
    # Literal text that looks like a tag would be substituted too: render such content instead.
    return any(isinstance(p, str) and _TAG_PREFIX in p for p in pieces)


def substitution_template(content: Content) -> _SubstitutionTemplate | None:
    subject = simple_template_pieces(content.subject)
    html = simple_template_pieces(content.html)
    text = simple_template_pieces(content.text) if content.text else None
    if subject is None or html is None or (content.text and text is None):
        return None
    if any(_literal_has_tag(p) for p in (subject, html, text or [])):
        return None
    html_body = _join(html, html_tag)
    if text is not None:
        text_body, text_names = _join(text, text_tag), _names(text)
    else:
        # Derived from the tagged HTML: the tags survive as text; text values are raw.
        text_body = html_to_text(html_body)
        for name in _names(html):
            text_body = text_body.replace(html_tag(name), text_tag(name))
        text_names = {n for n in _names(html) if text_tag(n) in text_body}
    return _SubstitutionTemplate(
        subject=_join(subject, text_tag),
        html=inline_css(html_body),
        text=text_body,
        text_fields=frozenset(text_names | _names(subject)),
        html_fields=frozenset(_names(html)),
        subject_fields=frozenset(_names(subject)),
    )


def _substitutions(
    template: _SubstitutionTemplate,
    fields: dict[str, Any],
    extra: dict[str, str] | None = None,
) -> dict[str, str] | None:
    """Per-recipient substitution values (with `extra`: the tracking links), or None when
    they cannot be sent as substitutions. Runs once per recipient: loops stay flat."""
    values: dict[str, str] = {}
    for name in template.text_fields:
        value = fields.get(name, _MISSING)
        values[text_tag(name)] = "" if value is _MISSING else str(value)
    for name in template.html_fields:
        value = fields.get(name, _MISSING)
        values[html_tag(name)] = "" if value is _MISSING else format_value(value, html=True)
    # One search over all values (a "{{" across two of them only sends this one rendered).
    if _TAG_PREFIX in "".join(values.values()):
        return None
    if extra:
        values.update(extra)
    # A line break in the subject is refused per recipient (by `render_message`).
    for name in template.subject_fields:
        if line_break_problem(name, values[text_tag(name)]):
            return None
    # A UTF-8 character takes at most 4 bytes: count bytes only when that bound is too high.
    chars = sum(map(len, values)) + sum(map(len, values.values()))
    if chars * 4 > MAX_SUBSTITUTION_BYTES:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
        if size > MAX_SUBSTITUTION_BYTES:
            return None
    return values


_MISSING = object()


_UNSUBSCRIBE_TAG = re.compile(r"\{\{\s*unsubscribe_url\s*\}\}")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def with_unsubscribe_footer(content: Content, footer: str) -> Content:
    """`content` whose HTML shows an unsubscribe link: `footer` goes before </body> (or at
    the end) when the template has no {{ unsubscribe_url }} of its own."""
    if not footer or _UNSUBSCRIBE_TAG.search(content.html):
        return content
    end = _BODY_END.search(content.html)
    at = end.start() if end else len(content.html)
    return replace(content, html=content.html[:at] + footer + content.html[at:])


def with_unsubscribe_url(recipient: BatchRecipient, url: str) -> BatchRecipient:
    # Ours wins over a recipient field of the same name: the link must be the real one.
    return recipient.model_copy(update={"fields": {**recipient.fields, "unsubscribe_url": url}})


def _tracked_template(
    template: _SubstitutionTemplate | None, tracker: LinkTracker
) -> tuple[_SubstitutionTemplate | None, list[str]]:
    """The shared body with tracking tags, and the link parts; None (render each message)
    when a link's URL holds a merge field: its tracked URL differs per recipient."""
    if template is None:
        return None, []
    unsubscribe = html_tag("unsubscribe_url")
    if any(href.strip() != unsubscribe for href in templated_hrefs(template.html)):
        return None, []
    html, parts = tracker.rewrite_shared(template.html)
    return replace(template, html=html), parts


def build_outbox(
    content: Content,
    campaign_id: UUID,
    batch_id: str,
    recipients: list[BatchRecipient],
    policy: HeaderPolicy,
    limits: RenderLimits | None = None,
    now: float | None = None,
) -> Outbox:
    """CPU-bound (user templates): call it off the event loop, see `render_pool`.

    With `content.tracking`, links and the open pixel carry `now` (default: the clock) as
    the send time, which the edge compares with a click's time to spot link scanners."""
    outbox = Outbox(
        sender=Sender(content.from_email, content.from_name), own_tracking=content.tracking
    )
    sender_problem = line_break_problem("from_name", content.from_name)
    if sender_problem is not None:  # content frozen before the API refused such names
        outbox.settled.extend(_failed(r, sender_problem) for r in recipients)
        return outbox
    content = with_unsubscribe_footer(content, policy.unsubscribe_footer)
    links = "unsubscribe_url" in content.html or "unsubscribe_url" in (content.text or "")
    template = substitution_template(content)
    tracker: LinkTracker | None = None
    link_parts: list[str] = []
    if content.tracking:
        sent_at = int(time.time() if now is None else now)
        tracker = LinkTracker(policy.public_base_url, policy.secret_key, campaign_id, sent_at)
        template, link_parts = _tracked_template(template, tracker)
    templated: list[TemplatedRecipient] = []
    campaign = str(campaign_id)  # once per batch: it goes into every recipient's custom args
    for recipient in recipients:
        if not is_valid_address(recipient.email):
            outbox.settled.append(_invalid(recipient))
            continue
        # One unsubscribe token per recipient, for the header and the body's link alike.
        url = policy.unsubscribe_link(campaign_id, recipient.recipient_id)
        headers = policy.headers(
            campaign_id, recipient.recipient_id, content.from_email, list_id=content.list_id,
            link=url,
        )  # fmt: skip
        args = custom_args(campaign, recipient.recipient_id, batch_id)
        tracked = tracker.substitutions(link_parts, recipient.recipient_id) if tracker else None
        values = None
        if template is not None:
            # `merge_fields` of `with_unsubscribe_url`, without copying the recipient.
            fields = {**recipient.fields, "unsubscribe_url": url} if links else recipient.fields
            values = _substitutions(template, {**fields, "email": recipient.email}, tracked)
        if template is not None and values is not None:
            templated.append(
                TemplatedRecipient(recipient.recipient_id, recipient.email, values, headers, args)
            )
        else:
            if links:
                recipient = with_unsubscribe_url(recipient, url)
            try:
                message = render_message(content, recipient, headers, args, limits, tracker)
            except Exception as exc:  # a user template may fail at runtime in any way
                outbox.settled.append(_failed(recipient, render_failure(exc)))
                continue
            outbox.individual.append(message)
    if template is not None and templated:
        outbox.templated = TemplatedGroup(template.subject, template.html, template.text, templated)
    return outbox


def _invalid(recipient: BatchRecipient) -> RecipientOutcome:
    return RecipientOutcome(
        recipient_id=recipient.recipient_id,
        email=recipient.email,
        status="invalid",
        error="invalid email address",
    )


def _failed(recipient: BatchRecipient, error: str) -> RecipientOutcome:
    return RecipientOutcome(
        recipient_id=recipient.recipient_id, email=recipient.email, status="failed", error=error
    )
