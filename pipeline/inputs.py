"""Find the input Parquet files and check them before any GPU time is spent.

Each file's footer and schema are read up front (in parallel; cheap even on S3), so a
truncated file, a non-Parquet file or a missing column stops the job at once with the
file named, or is skipped and listed in the run report when `on_bad_file: skip`. A
transient storage error (throttling, 5xx, a dropped connection) is never taken for a bad
file: past the retries it fails the check naming the operation and the key. The driver
keeps one small record per file (path, row-group sizes); the ids themselves are checked on
the cluster (`pipeline.idcheck`), so nothing here grows with the number of rows.
"""

from __future__ import annotations

import fnmatch
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.storage import StorageError, is_transient


class InputError(RuntimeError):
    """The input cannot be used as configured; the message names the file or column."""


@dataclass
class InputFiles:
    files: list[str]
    rows: int
    schema: pa.Schema
    skipped: list[dict[str, str]] = field(default_factory=list)
    row_groups: list[tuple[int, ...]] = field(default_factory=list)  # rows per row group, per file


def _hidden(path: str, root: str) -> bool:
    rel = path[len(root) :].lstrip("/")
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


def discover(path: str, fs: pafs.FileSystem) -> list[str]:
    """Parquet files at a file path, under a directory (recursively), or matching a glob."""
    try:
        return _discover(path, fs)
    except (InputError, StorageError):
        raise
    except Exception as exc:
        if is_transient(exc):
            raise StorageError("listing", path, exc) from exc
        raise


def _discover(path: str, fs: pafs.FileSystem) -> list[str]:
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
        others = sorted({i.path.rsplit(".", 1)[-1] for i in infos if i.type == pafs.FileType.File})
        seen = (
            f" (found files ending in: {', '.join(others[:8])}); only Parquet input is supported"
            if others
            else ""
        )
        raise InputError(f"no Parquet files found at {path}{seen}")
    return found


Footer = tuple[pa.Schema, int, tuple[int, ...]]


def _footer(fs: pafs.FileSystem, path: str) -> Footer | str:
    """Schema, row count and row-group sizes of one file, or why it is not a usable Parquet file."""
    try:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
            groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
            return meta.schema.to_arrow_schema(), meta.num_rows, groups
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes a reason
        if is_transient(exc):
            raise StorageError("reading the footer of", path, exc) from exc
        return _not_parquet(fs, path) or f"not a readable Parquet file ({type(exc).__name__}: {exc})"


_TEXT_FORMATS = {
    "csv": "CSV",
    "tsv": "TSV",
    "json": "JSON",
    "jsonl": "JSON Lines",
    "ndjson": "JSON Lines",
    "txt": "text",
}


def _not_parquet(fs: pafs.FileSystem, path: str) -> str | None:
    """Why a file is not Parquet at all (no `PAR1` magic at its start), in words a user acts on."""
    try:
        with fs.open_input_stream(path) as f:
            head = f.read(4)
    except Exception:  # noqa: BLE001 - the caller's reason stands
        return None
    if head == b"PAR1":
        return None  # Parquet, but broken: the caller's reason says how
    kind = _TEXT_FORMATS.get(path.rsplit(".", 1)[-1].lower())
    if kind is None and head[:1] in (b"{", b"["):
        kind = "JSON"
    what = f"a {kind} file" if kind else "not a Parquet file"
    return (
        f"{what}: only Parquet input is supported (convert it first, e.g. with "
        "pyarrow.csv.read_csv or pyarrow.json.read_json and pyarrow.parquet.write_table)"
    )


def inspect(
    files: list[str],
    fs: pafs.FileSystem,
    required: list[str],
    on_bad_file: str,
    id_column: str | None = None,
    threads: int = 16,
) -> InputFiles:
    """Check every file's footer: readable Parquet, the required columns, one id type everywhere."""
    with ThreadPoolExecutor(max_workers=min(threads, max(1, len(files)))) as pool:
        footers = list(pool.map(lambda p: _footer(fs, p), files))
    good: list[str] = []
    groups: list[tuple[int, ...]] = []
    skipped: list[dict[str, str]] = []
    schema: pa.Schema | None = None
    rows = 0
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
            s, n, row_groups = footer
            missing = [c for c in required if c not in s.names]
            if not missing:
                _same_id_type(schema, s, id_column, path)
                good.append(path)
                groups.append(row_groups)
                rows += n
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
    return InputFiles(good, rows, schema, skipped, groups)


def _same_id_type(first: pa.Schema | None, schema: pa.Schema, id_column: str | None, path: str) -> None:
    """Ids are compared across files (uniqueness, resume), so all files must agree on their type."""
    if first is None or id_column is None:
        return
    a, b = first.field(id_column).type, schema.field(id_column).type
    kinds = (pa.types.is_integer, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
    if a != b and not any(kind(a) and kind(b) for kind in kinds):
        raise InputError(f"column {id_column!r} is {b} in {path} but {a} in other files: use one type")
