"""First occurrences of addresses across a file read batch by batch, in bounded memory.

A file of 5 million rows cannot keep every address in a Python set within the importer's
1 GB. Each address is kept as a 128-bit fingerprint instead: two independent 64-bit
hashes (16 bytes, in two sorted numpy arrays). Two different addresses get the same
fingerprint with a probability of about 2^-128 per pair: for a file of 5 million distinct
addresses, about 10^-25, far below the odds of a memory error in the machine itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

Int64s = npt.NDArray[np.int64]
Hash = Callable[[str], int]


def _salted_hash(value: str) -> int:
    # A NUL never occurs in an address: "\0" + a differs from every address and from
    # "\0" + b, so this hash is independent of hash(a) (SipHash, keyed per process).
    return hash("\0" + value)


class FirstOccurrences:
    def __init__(self, hashes: tuple[Hash, Hash] = (hash, _salted_hash)) -> None:
        self._hashes = hashes
        # Sorted by the first hash; the second hash of the same entry at the same index.
        self._first: Int64s = np.empty(0, np.int64)
        self._second: Int64s = np.empty(0, np.int64)

    @property
    def distinct(self) -> int:
        return len(self._first)

    def mark(self, addresses: pa.Array) -> npt.NDArray[np.bool_]:
        """True for each row whose address appears for the first time in the file."""
        values = addresses.to_pylist()
        count = len(values)
        first = np.fromiter(map(self._hashes[0], values), np.int64, count)
        second = np.fromiter(map(self._hashes[1], values), np.int64, count)
        # Within the batch: the earliest row of each fingerprint (lexsort is stable).
        order = np.lexsort((second, first))
        sorted_first, sorted_second = first[order], second[order]
        starts = np.ones(count, np.bool_)
        starts[1:] = (sorted_first[1:] != sorted_first[:-1]) | (
            sorted_second[1:] != sorted_second[:-1]
        )
        candidates = order[starts]
        new = candidates[~self._contains(first[candidates], second[candidates])]
        self._add(first[new], second[new])
        marked = np.zeros(count, np.bool_)
        marked[new] = True
        return marked

    def _contains(self, first: Int64s, second: Int64s) -> npt.NDArray[np.bool_]:
        low = np.searchsorted(self._first, first, side="left")
        high = np.searchsorted(self._first, first, side="right")
        found = np.zeros(len(first), np.bool_)
        single = high - low == 1
        found[single] = self._second[low[single]] == second[single]
        # Different addresses with the same first hash (about one pair in 10^12 for
        # 5M addresses): compare the second hash with each of them.
        for index in np.flatnonzero(high - low > 1):
            found[index] = bool(np.any(self._second[low[index] : high[index]] == second[index]))
        return found

    def _add(self, first: Int64s, second: Int64s) -> None:
        order = np.argsort(first, kind="stable")
        merged_first = np.concatenate([self._first, first[order]])
        merged_second = np.concatenate([self._second, second[order]])
        # Two sorted runs: the stable sort (timsort) merges them in linear time.
        merge = np.argsort(merged_first, kind="stable")
        self._first, self._second = merged_first[merge], merged_second[merge]
