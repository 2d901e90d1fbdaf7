"""First occurrences of addresses across a file read batch by batch, in bounded memory.

A file of 5 million rows cannot keep every address in a Python set within the importer's
1 GB. Each address is kept as a 128-bit fingerprint instead (16 bytes, in two sorted numpy
arrays), computed with numpy over the Arrow buffers, without a Python object per row.

The fingerprint is two independent hashes, each a sum over the address's bytes of
(byte + 1) times a random 64-bit number drawn for that byte position, modulo 2^64
(random per process). For two different addresses of at most 254 octets, each hash
agrees with a probability of at most 2^-56 (a byte difference has at most 8 factors of
two): both, at most 2^-112. For a file of 5 million distinct addresses, the chance that
any two share a fingerprint is below 10^-20, far below that of a memory error in the
machine itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from services.importer.arrow_bytes import string_bytes

Int64s = npt.NDArray[np.int64]
Fingerprint = Callable[[pa.Array], tuple[Int64s, Int64s]]


class PositionalHashes:
    """The two hashes of each string of an Arrow string array (see the module docstring)."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = np.random.default_rng(
            seed if seed is not None else int.from_bytes(os.urandom(16), "little")
        )
        self._weights = np.empty((2, 0), np.uint64)

    def __call__(self, strings: pa.Array) -> tuple[Int64s, Int64s]:
        count = len(strings)
        offsets, data = string_bytes(strings)
        lengths = np.diff(offsets)
        starts = offsets[:-1]
        positions = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
        weights = self._weights_for(int(lengths.max()) if count else 0)
        values = data.astype(np.uint64) + np.uint64(1)  # a byte never counts as "absent"
        hashes = []
        # One zero more: reduceat needs its indices inside the array, also for a last
        # empty string; empty strings sum nothing (set below, reduceat would not).
        terms = np.zeros(len(data) + 1, np.uint64)
        for row in weights:
            np.multiply(values, row[positions], out=terms[:-1])
            summed = np.add.reduceat(terms, starts) if count else np.empty(0, np.uint64)
            summed[lengths == 0] = 0
            hashes.append(summed.view(np.int64))
        return hashes[0], hashes[1]

    def _weights_for(self, length: int) -> npt.NDArray[np.uint64]:
        if length > self._weights.shape[1]:
            more = max(256, length) - self._weights.shape[1]
            drawn = self._random.integers(0, 2**64, size=(2, more), dtype=np.uint64, endpoint=False)
            self._weights = np.concatenate([self._weights, drawn], axis=1)
        return self._weights


# Fingerprints of the latest batches are merged into a small sorted run first, and that
# run into the large one only when it passes this size: merging every batch into the
# large run would copy it once per batch (280 times for 5M rows in 18k-row batches).
_SMALL_RUN = 1 << 18


class _SortedRun:
    """Fingerprints sorted by the first hash; the second hash of an entry at its index."""

    def __init__(self) -> None:
        self.first: Int64s = np.empty(0, np.int64)
        self.second: Int64s = np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self.first)

    def contains(self, first: Int64s, second: Int64s) -> npt.NDArray[np.bool_]:
        found = np.zeros(len(first), np.bool_)
        if not len(self.first) or not len(first):
            return found
        last = len(self.first) - 1
        low = np.searchsorted(self.first, first, side="left")
        at = np.minimum(low, last)  # past the end: the last entry, smaller than the query
        hit = self.first[at] == first
        found[hit] = self.second[at[hit]] == second[hit]
        # Different addresses with the same first hash (rare): compare the second hash
        # with each entry of that first hash.
        after = np.minimum(low + 1, last)
        for index in np.flatnonzero(hit & (low < last) & (self.first[after] == first)):
            high = int(np.searchsorted(self.first, first[index], side="right"))
            found[index] = bool(np.any(self.second[low[index] : high] == second[index]))
        return found

    def merge(self, first: Int64s, second: Int64s) -> None:
        """Add fingerprints, keeping the run sorted by the first hash.

        The new ones (sorted) are placed at their positions in one new array per hash: at
        10M addresses, a merge by sorting the concatenation held three more arrays of the
        run's size at once (the concatenation, its sort order, the result), which took the
        importer over 1 GiB."""
        order = np.argsort(first, kind="stable")
        new_first, new_second = first[order], second[order]
        # Where each new fingerprint lands: after the run's entries of no greater hash,
        # and after the new ones before it.
        at = np.searchsorted(self.first, new_first, side="right")
        at += np.arange(len(at), dtype=at.dtype)
        kept = np.ones(len(self.first) + len(at), np.bool_)
        kept[at] = False
        self.first = _placed(self.first, new_first, at, kept)
        self.second = _placed(self.second, new_second, at, kept)


def _placed(
    run: Int64s, new: Int64s, at: npt.NDArray[np.intp], kept: npt.NDArray[np.bool_]
) -> Int64s:
    merged = np.empty(len(kept), np.int64)
    merged[at] = new
    merged[kept] = run
    return merged


class FirstOccurrences:
    def __init__(self, fingerprint: Fingerprint | None = None) -> None:
        self._fingerprint = fingerprint or PositionalHashes()
        self._large = _SortedRun()
        self._small = _SortedRun()

    @property
    def distinct(self) -> int:
        return len(self._large) + len(self._small)

    def mark(self, addresses: pa.Array) -> npt.NDArray[np.bool_]:
        """True for each row whose address appears for the first time in the file."""
        count = len(addresses)
        first, second = self._fingerprint(addresses)
        # Within the batch: the earliest row of each fingerprint (lexsort is stable).
        order = np.lexsort((second, first))
        sorted_first, sorted_second = first[order], second[order]
        starts = np.ones(count, np.bool_)
        starts[1:] = (sorted_first[1:] != sorted_first[:-1]) | (
            sorted_second[1:] != sorted_second[:-1]
        )
        candidates = order[starts]
        first_c, second_c = first[candidates], second[candidates]
        seen = self._large.contains(first_c, second_c) | self._small.contains(first_c, second_c)
        new = candidates[~seen]
        self._small.merge(first[new], second[new])
        if len(self._small) > _SMALL_RUN:
            self._large.merge(self._small.first, self._small.second)
            self._small = _SortedRun()
        marked = np.zeros(count, np.bool_)
        marked[new] = True
        return marked
