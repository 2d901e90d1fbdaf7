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
        if strings.type != pa.string():
            strings = strings.cast(pa.string())
        count = len(strings)
        offsets = np.frombuffer(
            strings.buffers()[1], np.int32, count=count + 1, offset=strings.offset * 4
        ).astype(np.int64)
        lengths = np.diff(offsets)
        data = np.frombuffer(strings.buffers()[2] or b"", np.uint8)[offsets[0] : offsets[-1]]
        starts = offsets[:-1] - offsets[0]
        positions = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
        weights = self._weights_for(int(lengths.max()) if count else 0)
        values = data.astype(np.uint64) + np.uint64(1)  # a byte never counts as "absent"
        hashes = []
        for row in weights:
            # One zero more: reduceat needs its indices inside the array, also for a last
            # empty string; empty strings sum nothing (set below, reduceat would not).
            terms = np.append(values * row[positions], np.uint64(0))
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


class FirstOccurrences:
    def __init__(self, fingerprint: Fingerprint | None = None) -> None:
        self._fingerprint = fingerprint or PositionalHashes()
        # Sorted by the first hash; the second hash of the same entry at the same index.
        self._first: Int64s = np.empty(0, np.int64)
        self._second: Int64s = np.empty(0, np.int64)

    @property
    def distinct(self) -> int:
        return len(self._first)

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
        # Different addresses with the same first hash (rare): compare the second hash
        # with each of them.
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
