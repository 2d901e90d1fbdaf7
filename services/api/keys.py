"""API keys and roles: what a key looks like, how it is stored, what each role may do.

Pure: no database, no HTTP. Keys are stored only as sha256 hashes; the clear key is shown once.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum

KEY_PREFIX = "mf_"
# Shown in key listings so that an admin can tell keys apart without seeing them.
DISPLAY_PREFIX_CHARS = 10


class Role(StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"


# Each role may do everything the roles below it may do.
_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}


def role_allows(held: Role, needed: Role) -> bool:
    return _RANK[held] >= _RANK[needed]


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_CHARS]
