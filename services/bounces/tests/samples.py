"""The DSN and ARF samples (Gmail, Outlook, Postfix, Yahoo formats), filled in for a test."""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str, *, verp: str, rcpt: str, message_id: str, report_id: str = "r1") -> bytes:
    """A sample as the bounce mailbox receives it (CRLF line ends), its placeholders set."""
    text = (SAMPLES / f"{name}.eml").read_text()
    for key, value in {
        "VERP": verp,
        "RCPT_LOCAL": rcpt.split("@")[0],
        "RCPT": rcpt,
        "MESSAGE_ID": message_id,
        "REPORT_ID": report_id,
    }.items():
        text = text.replace("{{" + key + "}}", value)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
