"""Address rules shared by every service: the importer's vectorised checks (pyarrow, for
files of millions of rows) and the same checks on one value, so that an address added by
API and one imported from a file are always judged alike (and dedupe against each other).

Addresses are trimmed and lower-cased (a list's dedupe key), then checked against RFC 5321
lengths and a dot-atom syntax that admits internationalised (IDN) domains.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

MAX_ADDRESS_OCTETS = 254
MAX_LOCAL_OCTETS = 64

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ASCII_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ASCII_TLD = r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})"
# RE2 syntax (pyarrow.compute), matched against the normalised (lower-cased) address.
ASCII_EMAIL_PATTERN = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_ASCII_LABEL}\.)+{_ASCII_TLD}$"
# Internationalised (IDN) domains: labels of Unicode letters and digits. Python's `re`,
# for the few non-ASCII addresses only: RE2 compiles Unicode classes anew on every call
# (50 ms, once per batch: more than all the other checks of 1M rows together).
_LETTER_OR_DIGIT = r"[^\W_]"
_IDN_LABEL = rf"{_LETTER_OR_DIGIT}(?:(?:{_LETTER_OR_DIGIT}|-){{0,61}}{_LETTER_OR_DIGIT})?"
_IDN_TLD = r"(?:[^\W\d_]{2,63}|xn--[a-z0-9-]{1,59})"
IDN_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_IDN_LABEL}\.)+{_IDN_TLD}")
_LOCAL_TOO_LONG = rf"^[^@]{{{MAX_LOCAL_OCTETS + 1},}}@"


def normalise_addresses(raw: pa.Array) -> pa.Array:
    return pc.utf8_lower(pc.utf8_trim_whitespace(raw))


def _syntax_ok(addresses: pa.Array) -> pa.Array:
    ok = pc.match_substring_regex(addresses, ASCII_EMAIL_PATTERN)
    retry = pc.and_(pc.invert(ok), pc.invert(pc.string_is_ascii(addresses)))
    if not pc.any(retry).as_py():
        return ok
    candidates = pc.filter(addresses, retry).to_pylist()
    idn_ok = pa.array([IDN_EMAIL.fullmatch(a) is not None for a in candidates], pa.bool_())
    return pc.replace_with_mask(ok, retry, idn_ok)


def rejection_reasons(addresses: pa.Array) -> pa.Array:
    """Why each normalised address is refused; null where it is valid."""
    octets = pc.binary_length(addresses)
    empty = pc.equal(octets, 0)
    too_long = pc.greater(octets, MAX_ADDRESS_OCTETS)
    local_too_long = pc.match_substring_regex(addresses, _LOCAL_TOO_LONG)
    malformed = pc.invert(_syntax_ok(addresses))
    none = pa.scalar(None, pa.string())
    return pc.if_else(
        empty,
        "missing email address",
        pc.if_else(
            too_long,
            f"email address longer than {MAX_ADDRESS_OCTETS} characters",
            pc.if_else(
                local_too_long,
                f"part before @ longer than {MAX_LOCAL_OCTETS} characters",
                pc.if_else(malformed, "invalid email address", none),
            ),
        ),
    )


class InvalidAddress(ValueError):
    """The reason is the importer's, e.g. 'invalid email address'."""


def normalised_address(raw: str) -> str:
    """The address trimmed and lower-cased; raises InvalidAddress with the reason."""
    addresses = normalise_addresses(pa.array([raw], pa.string()))
    reason = rejection_reasons(addresses)[0].as_py()
    if reason is not None:
        raise InvalidAddress(str(reason))
    return str(addresses[0].as_py())
