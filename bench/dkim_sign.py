"""DKIM signing cost per message: what the SMTP provider adds before sending.

    .venv/bin/python bench/dkim_sign.py [--messages 500]

Renders `--messages` messages (5 KB HTML with the unsubscribe footer), then times
`DkimSigner.sign` (serialise, sign, re-parse) with no key, an RSA-2048 key, an Ed25519 key
and both; and the unsigned path against what aiosmtplib did alone before signing existed.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time
import uuid
from email.message import EmailMessage
from typing import Literal

from aiosmtplib.email import flatten_message

from libs.common.events import BatchRecipient
from libs.common.settings import DEFAULT_UNSUBSCRIBE_FOOTER, DkimKeyConfig
from libs.mail.dkim_signing import DkimKey, DkimSigner, load_key, new_key_file
from libs.mail.headers import HeaderPolicy
from libs.mail.providers.smtp import mime_message
from libs.mail.rendering import Content, build_outbox


def make_key(folder: pathlib.Path, kind: Literal["rsa", "ed25519"]) -> DkimKey:
    path = new_key_file(folder / f"{kind}.pem", kind)
    return load_key(DkimKeyConfig(domain="example.com", selector=kind, key_file=str(path)))


def messages(n: int) -> list[EmailMessage]:
    campaign = uuid.uuid4()
    html = "<html><body><p>Hello {{ n }}</p>" + "<p>news paragraph</p>" * 100 + "</body></html>"
    content = Content(
        uuid.uuid4(), campaign, "Hi {{ n }}", html, None, "news@example.com", "News", uuid.uuid4()
    )
    people = [
        BatchRecipient(recipient_id=i, email=f"u{i}@x.org", fields={"n": f"N{i}"}) for i in range(n)
    ]
    policy = HeaderPolicy(
        "https://m.example.com", "k", unsubscribe_footer=DEFAULT_UNSUBSCRIBE_FOOTER
    )
    outbox = build_outbox(content, campaign, "b", people, policy)
    assert outbox.templated is not None
    rendered = [outbox.templated.expand(r) for r in outbox.templated.recipients]
    return [mime_message(outbox.sender, m) for m in rendered]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=500)
    mimes = messages(parser.parse_args().messages)
    folder = pathlib.Path(tempfile.mkdtemp())
    rsa_key, ed_key = make_key(folder, "rsa"), make_key(folder, "ed25519")
    size = len(mimes[0].as_bytes())
    for name, keys in (("none", []), ("rsa", [rsa_key]), ("ed25519", [ed_key]),
                       ("both", [rsa_key, ed_key])):  # fmt: skip
        signer = DkimSigner(keys)
        started = time.perf_counter()
        for mime in mimes:
            signer.sign(mime)
        took = time.perf_counter() - started
        print(
            f"{name:8s} {len(mimes) / took:6.0f} msg/s  {took / len(mimes) * 1000:.2f} ms/msg  ({size} B)"
        )
    started = time.perf_counter()
    for mime in mimes:
        flatten_message(mime)
    before = (time.perf_counter() - started) / len(mimes) * 1000
    started = time.perf_counter()
    for mime in mimes:
        flatten_message(DkimSigner([]).sign(mime))
    after = (time.perf_counter() - started) / len(mimes) * 1000
    print(f"unsigned, to the wire: {before:.2f} ms/msg (aiosmtplib alone), {after:.2f} ms/msg now")


if __name__ == "__main__":
    main()
