"""The bytes of an Arrow string array as numpy arrays, for vectorised byte-level work."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa


def string_bytes(strings: pa.Array) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """(offsets, data): string i is data[offsets[i]:offsets[i + 1]]. A sliced array's
    offsets start where its first string does; here they start at 0."""
    if strings.type != pa.string():
        strings = strings.cast(pa.string())
    count = len(strings)
    offsets = np.frombuffer(
        strings.buffers()[1], np.int32, count=count + 1, offset=strings.offset * 4
    ).astype(np.int64)
    data = np.frombuffer(strings.buffers()[2] or b"", np.uint8)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], data
