"""Ragged NumPy arrays <-> Arrow list columns: one values buffer plus offsets, so a batch
crosses the object store as a handful of buffers and is split back without a copy per row.

Below the kinds and the stage columns, which both carry their arrays this way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_list_array(items: list[np.ndarray | None], value_type: pa.DataType, large: bool = False) -> pa.Array:
    lengths = np.fromiter((0 if a is None else len(a) for a in items), dtype=np.int64, count=len(items))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    present = [a for a in items if a is not None and len(a)]
    values = np.concatenate(present) if present else np.zeros(0, dtype=value_type.to_pandas_dtype())
    mask = pa.array([a is None for a in items], pa.bool_())
    cls = pa.LargeListArray if large else pa.ListArray
    off = pa.array(offsets, pa.int64() if large else pa.int32())
    return cls.from_arrays(off, pa.array(values, value_type), mask=mask)


def from_list_array(col: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(arr))]


def flat_list(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, offsets from 0, valid) of a list column, without a copy per document."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0], valid
