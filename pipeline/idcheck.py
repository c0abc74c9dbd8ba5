"""Ids unique and not null across the whole input, checked before any work.

Resume skips the ids already written, so a repeated id would lose a row on resume and a
null one could not be resumed at all. Split tasks read the id column of a share of the
files and send each id to one of `parts` partitions by hash; one task per partition then
looks for repeats. Every task holds at most about `CHUNK_IDS` ids and the driver holds
object refs and counters only, so the check costs the same memory at any corpus size. An
input of at most `CHUNK_IDS` ids is checked by the driver itself, while Ray starts: it holds
no more ids than a task would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from pipeline.inputs import InputError, InputFiles
from pipeline.storage import StorageError, is_transient

CHUNK_IDS = 250_000
MAX_PARTS = 256


@dataclass
class IdCheck:
    ids: int
    seconds: float
    tasks: int


def start_id_check(
    inputs: InputFiles, fs: pafs.FileSystem, id_column: str, cpus: float
) -> Callable[[], IdCheck]:
    """Begin the check; the returned call waits for its verdict: InputError naming some
    repeated ids (or counting null ones), else what the check cost.

    An input of at most CHUNK_IDS rows (one share, one partition) is read in a thread of the
    driver, the very work one task would do, so it needs no Ray and overlaps Ray's start: that
    took it off the start-up's critical path (0.4 s of a small night). A larger input, even a
    single file, is checked by tasks on the cluster when the call comes, so Ray must be up by
    then, and no process holds more than a share of its ids."""
    if inputs.rows > CHUNK_IDS:
        return partial(_check_on_cluster, inputs, fs, id_column, cpus)
    started = time.time()
    pool = ThreadPoolExecutor(1, thread_name_prefix="id-check")
    verdict = pool.submit(_check_here, inputs, fs, id_column, started)
    pool.shutdown(wait=False)
    return verdict.result


def _check_here(inputs: InputFiles, fs: pafs.FileSystem, id_column: str, started: float) -> IdCheck:
    nulls, *pieces = split_ids(list(inputs.files), fs, id_column, 1)
    _refuse_nulls(nulls, id_column)
    _refuse_repeats([find_repeats(*pieces)], id_column)
    return IdCheck(inputs.rows, time.time() - started, 0)


def _check_on_cluster(inputs: InputFiles, fs: pafs.FileSystem, id_column: str, cpus: float) -> IdCheck:
    started = time.time()
    parts = max(1, min(MAX_PARTS, math.ceil(inputs.rows / CHUNK_IDS)))
    window = max(1, int(ray.cluster_resources().get("CPU", 1)))
    groups = _shares(inputs)
    split = _split.options(num_cpus=cpus, num_returns=parts + 1, scheduling_strategy="SPREAD")
    shares = _windowed([partial(split.remote, paths, fs, id_column, parts) for paths in groups], window)
    _refuse_nulls(sum(ray.get([share[0] for share in shares])), id_column)
    find = _repeats.options(num_cpus=cpus, scheduling_strategy="SPREAD")
    found = ray.get(
        _windowed([partial(find.remote, *[s[1 + p] for s in shares]) for p in range(parts)], window)
    )
    _refuse_repeats(found, id_column)
    return IdCheck(inputs.rows, time.time() - started, len(shares) + parts)


def _refuse_nulls(nulls: int, id_column: str) -> None:
    if nulls:
        raise InputError(f"{nulls} input rows have a null {id_column!r}; every row needs an id")


def _refuse_repeats(found: list[tuple[int, list]], id_column: str) -> None:
    repeated = sum(n for n, _ in found)
    if repeated:
        examples = ", ".join(repr(v) for _, ex in found for v in ex)
        raise InputError(
            f"{repeated} ids occur more than once in column {id_column!r} (e.g. {examples}): "
            "ids must be unique, because resume skips the ids already written. De-duplicate the "
            "input, or set input.check_unique_ids: false if you accept that risk"
        )


def _windowed(submits: list[Callable[[], Any]], window: int) -> list[Any]:
    """What each `submit()` returns (a task's ref, or its list of refs), with at most
    `window` in flight. The check is CPU-bound: more tasks at once than
    the cluster has CPUs add worker processes, not speed, and those workers then idle beside
    the night's for 20 s (pipeline.cluster.HEAD_SYSTEM_CONFIG): 4 at 1M documents on the bench's
    2-CPU cluster, where the night itself needs 2."""
    out: list = []
    pending: list = []
    for submit in submits:
        if len(pending) >= window:
            _, pending = ray.wait(pending, num_returns=1)
        refs = submit()
        out.append(refs)
        pending.append(refs[0] if isinstance(refs, list) else refs)
    return out


def _shares(inputs: InputFiles) -> list[list[str]]:
    """Consecutive files grouped into shares of about CHUNK_IDS rows."""
    shares: list[list[str]] = []
    rows = 0
    for path, groups in zip(inputs.files, inputs.row_groups, strict=True):
        n = sum(groups)
        if not shares or (rows + n > CHUNK_IDS and shares[-1]):
            shares.append([])
            rows = 0
        shares[-1].append(path)
        rows += n
    return shares


def _bucket(values: pa.Array, parts: int) -> np.ndarray:
    """Partition index of every id: a multiplicative hash for integers, pandas' hash otherwise."""
    if parts == 1:
        return np.zeros(len(values), dtype=np.int64)
    if pa.types.is_integer(values.type):
        mixed = values.cast(pa.int64()).to_numpy().view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return ((mixed >> np.uint64(32)) % np.uint64(parts)).astype(np.int64)
    import pandas as pd

    return (pd.util.hash_array(values.to_numpy(zero_copy_only=False)) % np.uint64(parts)).astype(np.int64)


def _canonical(values: pa.Array) -> pa.Array:
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64())
    if pa.types.is_string(values.type):
        return values.cast(pa.large_string())
    return values


def split_ids(paths: list[str], fs: pafs.FileSystem, id_column: str, parts: int) -> tuple:
    """Null count, then the ids of `paths` in `parts` partitions by hash."""
    nulls = 0
    pieces: list[list[pa.Array]] = [[] for _ in range(parts)]
    for path in paths:
        try:
            with fs.open_input_file(path) as f:
                column = pq.ParquetFile(f).read(columns=[id_column]).column(0)
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                raise StorageError("reading the ids of", path, exc) from None
            raise InputError(f"input file {path} became unreadable during the id check: {exc}") from None
        values = _canonical(column.combine_chunks())
        nulls += values.null_count
        values = values.drop_null()
        which = _bucket(values, parts)
        order = np.argsort(which, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(which, minlength=parts))])
        ordered = values.take(pa.array(order))
        for p in range(parts):
            pieces[p].append(ordered.slice(bounds[p], bounds[p + 1] - bounds[p]))
    return (nulls, *[pa.chunked_array(p) if p else pa.chunked_array([], pa.int64()) for p in pieces])


def find_repeats(*pieces: pa.ChunkedArray) -> tuple[int, list]:
    """How many ids repeat within one partition, and up to five of them."""
    chunks = [c for p in pieces for c in p.chunks if len(c)]
    if not chunks:
        return 0, []
    counts = pc.value_counts(pa.chunked_array(chunks))
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    return len(repeated), repeated.field("values")[:5].to_pylist()


# Not max_calls=1, so that the night reuses these workers: a fresh worker per task cost 6-7 s
# on every run here. `_windowed` keeps their number at the cluster's CPUs instead.
_split = ray.remote(split_ids)
_repeats = ray.remote(find_repeats)
