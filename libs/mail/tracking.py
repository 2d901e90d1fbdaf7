"""Open and click tracking: the rules shared by the dispatcher and the edge. Pure (no I/O).

The dispatcher rewrites every trackable link of a message's HTML to a signed redirect on
the public edge and adds an open pixel; the edge verifies what it is given and publishes
the hit. Nothing is looked up anywhere: a token carries all the edge needs.

Tokens (base64url, no padding), under HMAC-SHA256 of `MAILFLEET_SECRET_KEY` with a label
per kind, so that no token of one kind (or an unsubscribe token) passes as another:

- open, `/o/{token}`: version | campaign id (16) | recipient id (int64) | sent at (uint32,
  Unix seconds) | MAC (16).
- click, `/c/{link}/{who}`: `link` = version | campaign id (16) | link index (uint16) |
  the URL (UTF-8); `who` = recipient id (int64) | sent at (uint32) | MAC (16), the MAC
  over `link` and the rest of `who`. One MAC binds campaign, recipient, link index and the
  very URL: an edited URL, index or recipient fails verification, so the redirect only
  ever leads to a URL that was in the campaign's content (it is never open). The `link`
  part is the same for every recipient: the substitution path sends it in the shared body
  and only `who` per recipient.

Never rewritten: the unsubscribe link (and anything else on the edge itself), `mailto:`,
`tel:`, `#anchors`, relative and non-http(s) URLs, URLs that still hold a template tag, and
URLs longer than `MAX_URL_CHARS`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html as html_lib
import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit
from uuid import UUID

from libs.common.keyed_hash import keyed_sha256

VERSION = 1
_MAC_BYTES = 16
_WHO = struct.Struct(">qI")  # recipient id, sent at
_OPEN = struct.Struct(">B16sqI")  # version, campaign, recipient, sent at
_LINK_HEAD = struct.Struct(">B16sH")  # version, campaign, link index
MAX_URL_CHARS = 2000
# Links past this index in one message are left as they are (and a token's index is 16 bits).
MAX_LINKS = 500
# What the edge accepts before decoding anything: a click path part carries the URL.
MAX_TOKEN_CHARS = 4 * (MAX_URL_CHARS * 4 + _LINK_HEAD.size) // 3 + 4

OPEN_PATH = "/o/"
CLICK_PATH = "/c/"
# Per-recipient substitution tags of the shared (SendGrid substitution) body.
OPEN_TAG = "{{x:o}}"


def click_tag(index: int) -> str:
    return f"{{{{x:c{index}}}}}"


class BadTrackingToken(ValueError):
    pass


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # base64.urlsafe_b64encode without its two Python-level calls (tokens per recipient).
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if len(text) > MAX_TOKEN_CHARS or not text:
        raise BadTrackingToken("malformed tracking link")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error) as exc:
        raise BadTrackingToken("malformed tracking link") from exc


def _mac(secret: str, label: bytes, payload: bytes) -> bytes:
    if not secret:
        raise ValueError("MAILFLEET_SECRET_KEY is not set: tracking links cannot be signed")
    return keyed_sha256(secret).digest(label + payload)[:_MAC_BYTES]


_OPEN_LABEL = b"mailfleet:open:v1\x00"
_CLICK_LABEL = b"mailfleet:click:v1\x00"


@dataclass(frozen=True)
class Hit:
    kind: Literal["open", "click"]
    campaign_id: UUID
    recipient_id: int
    sent_at: int  # Unix seconds, when the message was rendered for sending
    link_index: int | None = None
    url: str | None = None


# ----- tokens -----


def open_token(secret: str, campaign_id: UUID, recipient_id: int, sent_at: int) -> str:
    payload = _OPEN.pack(VERSION, campaign_id.bytes, recipient_id, sent_at)
    return _b64(payload + _mac(secret, _OPEN_LABEL, payload))


def read_open_token(secret: str, token: str) -> Hit:
    raw = _unb64(token)
    if len(raw) != _OPEN.size + _MAC_BYTES:
        raise BadTrackingToken("malformed tracking link")
    payload, mac = raw[: _OPEN.size], raw[_OPEN.size :]
    if not hmac.compare_digest(mac, _mac(secret, _OPEN_LABEL, payload)):
        raise BadTrackingToken("this tracking link is not valid")
    version, campaign, recipient_id, sent_at = _OPEN.unpack(payload)
    if version != VERSION:
        raise BadTrackingToken("this tracking link is not valid")
    return Hit("open", UUID(bytes=campaign), recipient_id, sent_at)


def link_part(campaign_id: UUID, index: int, url: str) -> str:
    """The recipient-independent half of a click link: names the campaign, index and URL."""
    return _b64(_LINK_HEAD.pack(VERSION, campaign_id.bytes, index) + url.encode())


def who_part(secret: str, link: str, recipient_id: int, sent_at: int) -> str:
    """The per-recipient half of a click link, whose MAC also covers `link`."""
    who = _WHO.pack(recipient_id, sent_at)
    return _b64(who + _mac(secret, _CLICK_LABEL, link.encode() + b"/" + who))


def read_click_token(secret: str, link: str, who: str) -> Hit:
    head_and_url, raw_who = _unb64(link), _unb64(who)
    if len(raw_who) != _WHO.size + _MAC_BYTES or len(head_and_url) <= _LINK_HEAD.size:
        raise BadTrackingToken("malformed tracking link")
    payload, mac = raw_who[: _WHO.size], raw_who[_WHO.size :]
    # The MAC is over the text of `link` as sent: one canonical encoding only.
    if not hmac.compare_digest(mac, _mac(secret, _CLICK_LABEL, link.encode() + b"/" + payload)):
        raise BadTrackingToken("this tracking link is not valid")
    version, campaign, index = _LINK_HEAD.unpack(head_and_url[: _LINK_HEAD.size])
    try:
        url = head_and_url[_LINK_HEAD.size :].decode()
    except UnicodeDecodeError as exc:
        raise BadTrackingToken("this tracking link is not valid") from exc
    if version != VERSION or not is_trackable(url):
        raise BadTrackingToken("this tracking link is not valid")
    recipient_id, sent_at = _WHO.unpack(payload)
    return Hit("click", UUID(bytes=campaign), recipient_id, sent_at, index, url)


# ----- which links -----

_ANCHOR_HREF = re.compile(
    r"""(<(?:a|area)\b[^>]*?(?<![\w:-])href\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""",
    re.IGNORECASE,
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def is_trackable(url: str, edge_base_url: str | None = None) -> bool:
    """An absolute http(s) URL, not on the edge, without a template tag, not too long."""
    if not url or len(url) > MAX_URL_CHARS or "{{" in url or "}}" in url:
        return False
    if any(c in url for c in "\r\n\t\x00 "):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return False
    if edge_base_url and url.lower().startswith(edge_base_url.rstrip("/").lower() + "/"):
        return False  # the unsubscribe link, or a link already ours
    return True


@dataclass(frozen=True)
class Link:
    start: int  # of the attribute value's quote (or the bare value) in the HTML
    end: int
    url: str  # unescaped
    quote: str


def trackable_links(html: str, edge_base_url: str) -> list[Link]:
    """The links to rewrite, in document order (their index is their position here)."""
    links: list[Link] = []
    for match in _ANCHOR_HREF.finditer(html):
        if len(links) >= MAX_LINKS:
            break
        group = 2 if match.group(2) is not None else 3 if match.group(3) is not None else 4
        raw = match.group(group)
        url = html_lib.unescape(raw).strip()
        if not is_trackable(url, edge_base_url):
            continue
        quote = '"' if group == 2 else "'" if group == 3 else ""
        start = match.start(group) - len(quote)
        links.append(Link(start, match.end(group) + len(quote), url, quote))
    return links


def _replace(html: str, links: Sequence[Link], hrefs: Sequence[str]) -> str:
    out: list[str] = []
    at = 0
    for link, href in zip(links, hrefs, strict=True):
        out += [html[at : link.start], f'"{href}"']
        at = link.end
    out.append(html[at:])
    return "".join(out)


def _with_pixel(html: str, src: str) -> str:
    pixel = (
        f'<img src="{src}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px;overflow:hidden" />'
    )
    end = _BODY_END.search(html)
    at = end.start() if end else len(html)
    return html[:at] + pixel + html[at:]


@dataclass(frozen=True)
class LinkTracker:
    """Writes the tracking links of one campaign's messages, rendered at `sent_at`."""

    base_url: str
    secret: str
    campaign_id: UUID
    sent_at: int

    @property
    def _base(self) -> str:
        return self.base_url.rstrip("/")

    def open_url(self, recipient_id: int) -> str:
        token = open_token(self.secret, self.campaign_id, recipient_id, self.sent_at)
        return f"{self._base}{OPEN_PATH}{token}"

    def click_url(self, index: int, url: str, recipient_id: int) -> str:
        link = link_part(self.campaign_id, index, url)
        who = who_part(self.secret, link, recipient_id, self.sent_at)
        return f"{self._base}{CLICK_PATH}{link}/{who}"

    def rewrite(self, html: str, recipient_id: int) -> str:
        """One recipient's rendered HTML with its links tracked and the pixel added."""
        links = trackable_links(html, self._base)
        hrefs = [self.click_url(i, link.url, recipient_id) for i, link in enumerate(links)]
        return _with_pixel(_replace(html, links, hrefs), self.open_url(recipient_id))

    def rewrite_shared(self, html: str) -> tuple[str, list[str]]:
        """A shared body whose per-recipient parts are substitution tags; returns it and
        the `link` part of each tracked link (for `substitutions`)."""
        links = trackable_links(html, self._base)
        parts = [link_part(self.campaign_id, i, link.url) for i, link in enumerate(links)]
        hrefs = [f"{self._base}{CLICK_PATH}{p}/{click_tag(i)}" for i, p in enumerate(parts)]
        body = _with_pixel(_replace(html, links, hrefs), f"{self._base}{OPEN_PATH}{OPEN_TAG}")
        return body, parts

    def substitutions(self, parts: Sequence[str], recipient_id: int) -> dict[str, str]:
        values = {
            click_tag(i): who_part(self.secret, part, recipient_id, self.sent_at)
            for i, part in enumerate(parts)
        }
        values[OPEN_TAG] = open_token(self.secret, self.campaign_id, recipient_id, self.sent_at)
        return values


# ----- machine hits -----

# Apple Mail Privacy Protection fetches remote content through Apple's proxies: Apple's own
# network 17.0.0.0/8 (Apple's ARIN allocation), with the bare user agent "Mozilla/5.0"
# (Apple documents that MPP loads content privately, "hiding your IP address"; the UA and
# network are how ESPs such as SendGrid and Litmus identify those prefetches).
APPLE_NETWORKS = (ipaddress.ip_network("17.0.0.0/8"),)
APPLE_PROXY_USER_AGENT = "Mozilla/5.0"
DEFAULT_SCANNER_SECONDS = 10


def machine_reason(
    hit: Hit,
    user_agent: str,
    client_ip: str,
    now: float,
    scanner_seconds: float = DEFAULT_SCANNER_SECONDS,
) -> str | None:
    """Why this hit is a machine's and not a reader's, or None.

    `apple_mpp`: an open from Apple's proxy (network or user agent). `scanner`: a click
    within `scanner_seconds` of the send (security gateways follow every link on arrival;
    a person has not read the mail yet).
    """
    if hit.kind == "open":
        if user_agent.strip() == APPLE_PROXY_USER_AGENT or _in_apple_network(client_ip):
            return "apple_mpp"
        return None
    if 0 <= now - hit.sent_at < scanner_seconds:
        return "scanner"
    return None


def _in_apple_network(client_ip: str) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in network for network in APPLE_NETWORKS)


def templated_hrefs(html: str) -> list[str]:
    """The raw link targets of `html` that hold a template or substitution tag."""
    hrefs = []
    for match in _ANCHOR_HREF.finditer(html):
        raw = next(g for g in match.groups()[1:] if g is not None)
        if "{{" in raw:
            hrefs.append(html_lib.unescape(raw))
    return hrefs
