"""Find the input Parquet files and check them before any GPU time is spent.

Each file's footer and schema are read up front (in parallel; cheap even on S3), so a
truncated file, a non-Parquet file or a missing column stops the job at once with the
file named, or is skipped and listed in the run report when `on_bad_file: skip`. The id
column alone is read too: resume skips the ids already written, so ids must be unique and
not null, and a night that breaks that is refused before it starts.
"""

from __future__ import annotations

import fnmatch
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class InputError(RuntimeError):
    """The input cannot be used as configured; the message names the file or column."""


@dataclass
class InputFiles:
    files: list[str]
    rows: int
    schema: pa.Schema
    skipped: list[dict[str, str]] = field(default_factory=list)


def _hidden(path: str, root: str) -> bool:
    rel = path[len(root) :].lstrip("/")
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


def discover(path: str, fs: pafs.FileSystem) -> list[str]:
    """Parquet files at a file path, under a directory (recursively), or matching a glob."""
    if any(c in path for c in "*?["):
        root = path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        found = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [path]
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"input path not found: {path}")
        root = path
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        found = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    found = sorted(p for p in found if not _hidden(p, root))
    if not found:
        raise InputError(f"no Parquet files found at {path}")
    return found


Footer = tuple[pa.Schema, int, pa.ChunkedArray | None]


def _footer(fs: pafs.FileSystem, path: str, id_column: str | None) -> Footer | str:
    """Schema, row count and (when asked and present) the id column of one file, or why not."""
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            schema = pf.metadata.schema.to_arrow_schema()
            ids = None
            if id_column and id_column in schema.names:
                ids = pf.read(columns=[id_column]).column(0)
            return schema, pf.metadata.num_rows, ids
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes a reason
        return f"not a readable Parquet file ({type(exc).__name__}: {exc})"


def check_unique_ids(ids: list[pa.ChunkedArray], id_column: str) -> None:
    """Refuse null or repeated ids: resume skips written ids, so each must name one row."""
    chunks = [c for a in ids for c in a.chunks]
    if not chunks:
        return
    try:
        column = pa.chunked_array([c.cast(chunks[0].type) for c in chunks])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"column {id_column!r} has different types in different files: {exc}") from exc
    if column.null_count:
        raise InputError(f"{column.null_count} input rows have a null {id_column!r}; every row needs an id")
    counts = pc.value_counts(column)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        examples = ", ".join(repr(v) for v in repeated.field("values")[:5].to_pylist())
        raise InputError(
            f"{len(repeated)} ids occur more than once in column {id_column!r} (e.g. {examples}): "
            "ids must be unique, because resume skips the ids already written. De-duplicate the "
            "input, or set input.check_unique_ids: false if you accept that risk"
        )


def inspect(
    files: list[str],
    fs: pafs.FileSystem,
    required: list[str],
    on_bad_file: str,
    threads: int = 16,
    id_column: str | None = None,
) -> InputFiles:
    """Check every file; with `id_column`, also that ids are unique and not null across all of them."""
    with ThreadPoolExecutor(max_workers=min(threads, max(1, len(files)))) as pool:
        footers = list(pool.map(lambda p: _footer(fs, p, id_column), files))
    good: list[str] = []
    skipped: list[dict[str, str]] = []
    schema: pa.Schema | None = None
    rows = 0
    ids: list[pa.ChunkedArray] = []
    readable = [f for f in footers if not isinstance(f, str)]
    if readable and all(any(c not in s.names for c in required) for s, _, _ in readable):
        s0 = readable[0][0]
        missing = [c for c in required if c not in s0.names]
        raise InputError(
            f"input has no column {', '.join(map(repr, missing))} (columns: {', '.join(s0.names)}); "
            "set input.text_column / input.id_column"
        )
    for path, footer in zip(files, footers, strict=True):
        if isinstance(footer, str):
            reason = footer
        else:
            s, n, file_ids = footer
            missing = [c for c in required if c not in s.names]
            if not missing:
                good.append(path)
                rows += n
                if file_ids is not None:
                    ids.append(file_ids)
                schema = schema or s
                continue
            reason = f"no column {', '.join(map(repr, missing))} (columns: {', '.join(s.names)})"
        if on_bad_file == "fail":
            raise InputError(
                f"bad input file {path}: {reason}. Set input.on_bad_file: skip to skip such files."
            )
        skipped.append({"path": path, "reason": reason})
    if not good:
        raise InputError(
            "no usable input files: " + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped)
        )
    assert schema is not None
    if id_column:
        check_unique_ids(ids, id_column)
    return InputFiles(good, rows, schema, skipped)
