"""A private dovecot IMAP server for tests: its own configuration, state and mail in a
temporary folder, one user, plain login on 127.0.0.1 (see docs/machine notes)."""

from __future__ import annotations

import contextlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.common.embedded import free_port

DOVECOT = "/usr/sbin/dovecot"
USER, PASSWORD = "bounces", "secret"


@dataclass
class Dovecot:
    config: Path
    port: int
    maildir: Path

    def stop(self) -> None:
        subprocess.run([DOVECOT, "-c", str(self.config), "stop"], check=False, timeout=30)


def missing_reason() -> str | None:
    """Why dovecot cannot run here, or None."""
    if shutil.which(DOVECOT) is None and not Path(DOVECOT).exists():
        return "dovecot is not installed (apt-get install dovecot-imapd; `make tools` does it)"
    try:
        pwd.getpwnam("dovenull")
    except KeyError:
        return "dovecot's dovenull user is missing"
    return None


def start_dovecot(folder: Path, timeout: float = 30.0) -> Dovecot:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    mail = folder / "mail"
    mail.mkdir(exist_ok=True)
    dovenull = pwd.getpwnam("dovenull")
    shutil.chown(mail, dovenull.pw_uid, dovenull.pw_gid)
    (folder / "passwd").write_text(
        f"{USER}:{{PLAIN}}{PASSWORD}:{dovenull.pw_uid}:{dovenull.pw_gid}::{mail}/{USER}\n"
    )
    port = free_port()
    config = folder / "dovecot.conf"
    config.write_text(
        f"""
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:{mail}/%u
passdb {{
  driver = passwd-file
  args = {folder}/passwd
}}
userdb {{
  driver = passwd-file
  args = {folder}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""
    )
    subprocess.run([DOVECOT, "-c", str(config)], check=True, timeout=30)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                if conn.recv(100).startswith(b"* OK"):
                    break
        except OSError:
            if time.monotonic() > deadline:
                log = (
                    (folder / "dovecot.log").read_text()
                    if (folder / "dovecot.log").exists()
                    else ""
                )
                raise RuntimeError(f"dovecot did not start on port {port}: {log[-2000:]}") from None
            time.sleep(0.1)
    return Dovecot(config, port, mail / USER)


@contextlib.contextmanager
def private_dovecot(prefix: str = "mailfleet-dovecot-") -> Iterator[Dovecot]:
    """A dovecot for the caller's scope; skips the test when dovecot cannot run here.

    Its folder is not under pytest's tmp_path: that is 0700 root, and dovecot's auth process
    (its own user) must read the passwd file."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    server = start_dovecot(folder)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
