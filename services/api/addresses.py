"""One address, checked and normalised exactly as the importer checks a file's column.

The importer's rules are vectorised (pyarrow) for files of millions of rows; this applies
the same functions to a single value so that an address added by API and one imported
from a file are always judged alike (and dedupe against each other on the list).
"""

from __future__ import annotations

import pyarrow as pa

from services.importer.validation import normalise_addresses, rejection_reasons


class InvalidAddress(ValueError):
    """The reason is the importer's, e.g. 'invalid email address'."""


def normalised_address(raw: str) -> str:
    """The address trimmed and lower-cased; raises InvalidAddress with the reason."""
    addresses = normalise_addresses(pa.array([raw], pa.string()))
    reason = rejection_reasons(addresses)[0].as_py()
    if reason is not None:
        raise InvalidAddress(str(reason))
    return str(addresses[0].as_py())
