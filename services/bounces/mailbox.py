"""The bounce mailbox over IMAP (aioimaplib): list what is waiting, fetch it, move it away.

Moving is the receipt: a mail stays in the inbox until its events are published, so a poller
that dies in between reads it again (the tracker dedupes on event ids).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aioimaplib

from libs.common.settings import Settings

# One poll reads at most this many mails; the rest wait for the next poll.
MAX_PER_POLL = 200


class MailboxError(Exception):
    """The IMAP server refused a command (login, select, fetch, move)."""


@dataclass(frozen=True)
class MailboxConfig:
    host: str
    port: int
    tls: bool
    user: str
    password: str
    mailbox: str
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MailboxConfig:
        return cls(
            host=settings.bounce_imap_host,
            port=settings.bounce_imap_port,
            tls=settings.bounce_imap_tls == "implicit",
            user=settings.bounce_imap_user,
            password=settings.bounce_imap_password,
            mailbox=settings.bounce_imap_mailbox,
        )


class BounceMailbox:
    def __init__(self, config: MailboxConfig) -> None:
        self.config = config
        self._client: aioimaplib.IMAP4 | None = None
        self._folders: set[str] = set()

    async def open(self) -> None:
        c = self.config
        client = (
            aioimaplib.IMAP4_SSL(
                host=c.host,
                port=c.port,
                timeout=c.timeout_s,
                ssl_context=ssl.create_default_context(),
            )
            if c.tls
            else aioimaplib.IMAP4(host=c.host, port=c.port, timeout=c.timeout_s)
        )
        await client.wait_hello_from_server()
        self._client = client
        _ok(await client.login(c.user, c.password), "LOGIN")
        _ok(await client.select(c.mailbox), f"SELECT {c.mailbox}")

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.logout()
            except Exception:  # noqa: S110 - the connection may already be gone
                pass
            self._client = None

    @property
    def client(self) -> aioimaplib.IMAP4:
        if self._client is None:
            raise MailboxError("the mailbox is not open")
        return self._client

    async def waiting(self) -> list[str]:
        """UIDs of the mails waiting in the inbox, oldest first, at most MAX_PER_POLL."""
        response = _ok(await self.client.uid_search("ALL"), "UID SEARCH")
        uids = [uid for line in response.lines[:-1] for uid in line.decode().split()]
        return sorted(uids, key=int)[:MAX_PER_POLL]

    async def fetch(self, uid: str) -> bytes | None:
        """The mail's bytes (not marked seen), or None when it is gone."""
        response = _ok(await self.client.uid("fetch", uid, "(BODY.PEEK[])"), f"FETCH {uid}")
        literal = next((ln for ln in response.lines if isinstance(ln, bytearray)), None)
        return bytes(literal) if literal is not None else None

    async def move(self, uid: str, folder: str) -> None:
        if folder not in self._folders:
            # NO [ALREADYEXISTS] is fine: the folder is there.
            await self.client.create(folder)
            self._folders.add(folder)
        if self.client.has_capability("MOVE"):
            _ok(await self.client.uid("move", uid, folder), f"MOVE {uid}")
            return
        _ok(await self.client.uid("copy", uid, folder), f"COPY {uid}")
        _ok(await self.client.uid("store", uid, "+FLAGS.SILENT (\\Deleted)"), f"STORE {uid}")
        _ok(await self.client.expunge(), "EXPUNGE")


def _ok(response: aioimaplib.Response, command: str) -> aioimaplib.Response:
    if response.result != "OK":
        detail = b" ".join(ln for ln in response.lines if isinstance(ln, bytes)).decode(
            errors="replace"
        )
        raise MailboxError(f"{command}: {response.result} {detail[:200]}")
    return response
