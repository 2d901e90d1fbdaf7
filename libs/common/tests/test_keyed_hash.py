"""The per-recipient tokens' HMAC must be HMAC-SHA256 exactly: links already sent verify."""

from __future__ import annotations

import hashlib
import hmac
import os

from libs.common.keyed_hash import KeyedSha256, keyed_sha256


def test_it_is_hmac_sha256_for_short_long_and_block_sized_keys() -> None:
    for key_length in (0, 1, 32, 63, 64, 65, 200):
        key = os.urandom(key_length)
        keyed = KeyedSha256(key)
        for message in (b"", b"x", os.urandom(24), os.urandom(1000)):
            assert keyed.digest(message) == hmac.digest(key, message, hashlib.sha256)


def test_a_secret_is_keyed_once_and_each_secret_apart() -> None:
    assert keyed_sha256("one") is keyed_sha256("one")
    assert keyed_sha256("one").digest(b"m") != keyed_sha256("two").digest(b"m")
    assert keyed_sha256("ünï").digest(b"m") == hmac.digest("ünï".encode(), b"m", "sha256")
