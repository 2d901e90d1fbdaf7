"""First occurrences by fingerprint: exact across batches, and across hash collisions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from services.importer import dedupe
from services.importer.dedupe import FirstOccurrences, Int64s, PositionalHashes


def _marks(occurrences: FirstOccurrences, addresses: list[str]) -> list[bool]:
    return occurrences.mark(pa.array(addresses, pa.string())).tolist()


def test_first_row_of_each_address_wins_within_and_across_batches() -> None:
    occurrences = FirstOccurrences()
    assert _marks(occurrences, ["a@x.io", "b@x.io", "a@x.io", "c@x.io", "b@x.io"]) == [
        True,
        True,
        False,
        True,
        False,
    ]
    assert _marks(occurrences, ["c@x.io", "d@x.io", "d@x.io", "a@x.io"]) == [
        False,
        True,
        False,
        False,
    ]
    assert _marks(occurrences, []) == []
    assert occurrences.distinct == 4


def test_addresses_sharing_the_first_hash_are_told_apart_by_the_second() -> None:
    # A first hash that collides for every address of the same length.
    def lengths_then_hash(addresses: pa.Array) -> tuple[Int64s, Int64s]:
        values = addresses.to_pylist()
        return np.array([len(v) for v in values], np.int64), np.array(
            [hash(v) for v in values], np.int64
        )

    occurrences = FirstOccurrences(lengths_then_hash)
    assert _marks(occurrences, ["aa@x.io", "bb@x.io", "aa@x.io", "cc@x.io"]) == [
        True,
        True,
        False,
        True,
    ]
    assert _marks(occurrences, ["dd@x.io", "bb@x.io", "cc@x.io", "dd@x.io", "e@x.io"]) == [
        True,
        False,
        False,
        False,
        True,
    ]
    assert occurrences.distinct == 5


def test_many_batches_keep_every_distinct_address() -> None:
    occurrences = FirstOccurrences()
    firsts = 0
    for batch in range(20):
        # Each batch: 500 new addresses and 500 seen in the batch before.
        addresses = [f"u{batch}-{i}@x.io" for i in range(500)]
        addresses += [f"u{batch - 1}-{i}@x.io" for i in range(500)] if batch else []
        firsts += sum(_marks(occurrences, addresses))
    assert firsts == occurrences.distinct == 20 * 500


def test_positional_hashes_tell_strings_apart_and_agree_on_equal_ones() -> None:
    hashes = PositionalHashes(seed=1)
    words = ["", "a", "b", "ab", "ba", "a\x00", "aa", "é", "e\u0301", "x" * 300, "x" * 301]
    strings = pa.array(words + words[::-1], pa.string())
    first, second = hashes(strings)
    pairs = list(zip(first.tolist(), second.tolist(), strict=True))
    assert len(set(pairs[: len(words)])) == len(words)  # all different
    assert pairs[: len(words)] == pairs[len(words) :][::-1]  # equal strings, equal hashes
    # A slice (an offset into the buffers) hashes as the same strings do on their own.
    sliced_first, _ = hashes(strings.slice(3, 4))
    assert sliced_first.tolist() == first[3:7].tolist()


def test_runs_merge_without_losing_or_repeating_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    # A small run of 64 fingerprints: the batches below merge it into the large one often.
    monkeypatch.setattr(dedupe, "_SMALL_RUN", 64)
    occurrences = FirstOccurrences()
    for batch in range(30):
        fresh = [f"r{batch}-{i}@x.io" for i in range(50)]
        again = [f"r{old}-{i}@x.io" for old in range(batch) for i in (0, 49)]
        assert _marks(occurrences, fresh + again) == [True] * 50 + [False] * len(again)
    assert occurrences.distinct == 30 * 50


def test_a_merged_run_is_the_sorted_union_with_each_second_hash_beside_its_first() -> None:
    rng = np.random.default_rng(7)
    run = dedupe._SortedRun()  # noqa: SLF001
    pairs: list[tuple[int, int]] = []
    for size in (0, 1, 5, 300, 40):
        # Few distinct first hashes: equal ones meet across and within merges.
        first = rng.integers(-50, 50, size).astype(np.int64)
        second = rng.integers(-(2**62), 2**62, size).astype(np.int64)
        run.merge(first, second)
        pairs += zip(first.tolist(), second.tolist(), strict=True)
        assert run.first.tolist() == sorted(f for f, _ in pairs)
        assert sorted(zip(run.first.tolist(), run.second.tolist(), strict=True)) == sorted(pairs)
