"""DKIM signatures (RFC 6376, RFC 8463) for the messages mailfleet sends itself (SMTP).

Keys are configured per From domain (`MAILFLEET_DKIM_KEYS`); a domain may have an RSA and
an Ed25519 key, and the message then carries both signatures (receivers that do not know
Ed25519 yet still verify the RSA one). A message from a domain without a key goes unsigned.
"""

from __future__ import annotations

import base64
import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage, Message
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from libs.common.settings import DkimKeyConfig

DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]

# Signed when present. Not To/Cc per recipient changes, but they are signed too: mailfleet
# sends one message per recipient. Listed twice where a header must not be added later.
SIGNED_HEADERS = (
    "From", "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
    "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID", "Reply-To",
)  # fmt: skip


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: DkimAlgorithm
    # As dkimpy wants it: PKCS#1 PEM for RSA, the base64 32-byte seed for Ed25519.
    private: bytes
    # The p= value of the DNS record (base64), to compare with what DNS publishes.
    public_b64: str

    def dns_record(self) -> str:
        kind = "rsa" if self.algorithm == "rsa-sha256" else "ed25519"
        return f"v=DKIM1; k={kind}; p={self.public_b64}"


_WIRE = email.policy.SMTP.clone(max_line_length=998)


@lru_cache(maxsize=64)
def _openssl_key(numbers: tuple[int, ...]) -> rsa.RSAPrivateKey:
    n, e, d, p, q, dmp1, dmq1, iqmp = numbers
    public = rsa.RSAPublicNumbers(e, n)
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, public).private_key()


def _rsa_sign_with_openssl(digest: Any, pk: dict[str, int]) -> bytes:
    """dkimpy's RSASSA-PKCS1-v1_5 signature, computed by OpenSSL instead of Python's pow().

    PKCS#1 v1.5 is deterministic: the bytes are the same (tested), only ~10x faster — the
    pure-Python operation took 11 ms per message and held the event loop meanwhile.
    """
    numbers = tuple(pk[name] for name in _RSA_FIELDS)
    algorithm = hashes.SHA256() if digest.name == "sha256" else hashes.SHA1()
    return _openssl_key(numbers).sign(digest.digest(), padding.PKCS1v15(), Prehashed(algorithm))


_RSA_FIELDS = (
    "modulus", "publicExponent", "privateExponent", "prime1", "prime2",
    "exponent1", "exponent2", "coefficient",
)  # fmt: skip
# dkimpy calls this module-level name when it signs (DKIM.gen_header).
dkim.RSASSA_PKCS1_v1_5_sign = _rsa_sign_with_openssl


class DkimKeyError(ValueError):
    """A configured key file is missing or not an RSA/Ed25519 private key."""


def load_key(config: DkimKeyConfig) -> DkimKey:
    """Read a PEM private key (PKCS#1 or PKCS#8, RSA or Ed25519) from `config.key_file`."""
    try:
        data = Path(config.key_file).read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise DkimKeyError(f"DKIM key for {config.domain}: {config.key_file}: {exc}") from exc
    domain, selector = config.domain.lower().rstrip("."), config.selector
    if isinstance(key, rsa.RSAPrivateKey):
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return DkimKey(domain, selector, "rsa-sha256", private, base64.b64encode(public).decode())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        raw_public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return DkimKey(
            domain,
            selector,
            "ed25519-sha256",
            base64.b64encode(seed),
            base64.b64encode(raw_public).decode(),
        )
    raise DkimKeyError(f"DKIM key for {config.domain}: only RSA and Ed25519 keys are supported")


def new_key_file(path: Path, kind: Literal["rsa", "ed25519"]) -> Path:
    """A new private key (RSA-2048 or Ed25519) written to `path` as PKCS#8 PEM, owner-only."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return path


def load_keys(configs: list[DkimKeyConfig]) -> list[DkimKey]:
    return [load_key(c) for c in configs]


def from_domain(message: Message) -> str:
    address = str(message.get("From", ""))
    return address.rsplit("@", 1)[-1].strip(" >").lower()


class DkimSigner:
    def __init__(self, keys: list[DkimKey]) -> None:
        self._by_domain: dict[str, list[DkimKey]] = {}
        for key in keys:
            self._by_domain.setdefault(key.domain, []).append(key)

    def sign(self, mime: EmailMessage) -> Message:
        """`mime` as it goes on the wire, with a DKIM-Signature per key of its From domain
        (none for a domain without a key).

        The result is the serialised bytes parsed back (compat32), which aiosmtplib sends
        without re-encoding: what was signed is what is sent (compat32 refolds long lines
        only at whitespace, which relaxed canonicalisation ignores). Serialised with lines up
        to RFC 5322's 998 characters: at 78, the email package turns a long header without
        spaces (List-Unsubscribe's URL, Feedback-ID) into RFC 2047 encoded words, which
        mailbox providers do not decode in those headers.
        """
        raw = mime.as_bytes(policy=_WIRE)
        signatures = b"".join(
            dkim.sign(
                raw,
                key.selector.encode(),
                key.domain.encode(),
                key.private,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=key.algorithm.encode(),
                include_headers=[h.encode() for h in SIGNED_HEADERS],
            )
            for key in self._by_domain.get(from_domain(mime), [])
        )
        return email.message_from_bytes(signatures + raw, policy=email.policy.compat32)
