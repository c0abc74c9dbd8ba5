"""The read stage: the checked input files, as blocks of `docs_per_batch` rows.

A Ray Data datasource of our own rather than `read_parquet`, because the job has already
read every footer (`pipeline.inputs`): read tasks are planned from that list with no
listing task, blocks come out at the batch size with no repartition step (so the read
fuses with tokenization into one CPU task), and a file that vanished or broke after the
check is named, or skipped and counted under `on_bad_file: skip`. A transient storage
error is never taken for a bad file: it fails the task as a `StorageError`.

On resume the rows whose ids Ray Data's checkpoint holds are dropped here, as they are
read, with Ray's own filter over its own sorted id array (`DoneIds`, one shared object): Ray
Data would otherwise add a filter actor pool that takes a whole CPU per actor, which on a
small cluster leaves the read tasks no CPU at all (seen: a resumed run that never moved).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.checkpoint import CheckpointConfig
from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager, NumpyArrayBasedCheckpointFilter

from pipeline.inputs import InputError, InputFiles
from pipeline.storage import StorageError, is_transient
from pipeline.tally import note, report

UNIT_ROWS = 50_000  # row groups are gathered into read tasks of about this many rows


_filters: dict[str, NumpyArrayBasedCheckpointFilter] = {}


class DoneIds:
    """The ids a resumed run skips: Ray Data's sorted checkpoint array, fetched once per worker."""

    def __init__(self, config: CheckpointConfig, ref: Any) -> None:
        self.config = config
        self.ref = ref  # an ObjectRef: the array stays in the object store, shared, never copied

    def drop(self, table: pa.Table) -> pa.Table:
        key = self.ref.hex()
        if key not in _filters:
            _filters.clear()  # one run's array at a time per worker
            _filters[key] = NumpyArrayBasedCheckpointFilter(self.config, self.ref)
        return _filters[key].filter_rows_for_block(table)


class FilteredByReader(IdColumnCheckpointManager):
    """Ray Data's checkpoint, with the resume filter done by our read stage (see pipeline.reader).

    Returning no checkpoint here keeps Ray Data from adding its filter actor pool; the
    checkpoint is loaded by `done_ids` instead, with Ray's own loader.
    """

    def load_checkpoint(self, data_file_dir=None, data_file_filesystem=None):
        return None, 0


def done_ids(ctx: Any, data_dir: str, out_fs: Any) -> DoneIds | None:
    """The ids already written (sorted, in the object store), after Ray cleans unfinished writes.

    A night's first run has no checkpoint file, so nothing to clean or load: Ray writes a
    write's pending checkpoint before its data file. One listing says so, instead of the Ray
    task that cleaning is, which a small night waited 0.4 s for before its first block."""
    manager = IdColumnCheckpointManager(checkpoint_config=ctx.checkpoint_config, data_context=ctx)
    where = pafs.FileSelector(manager.checkpoint_path_unwrapped, recursive=True, allow_not_found=True)
    if not any(f.type == pafs.FileType.File for f in manager.filesystem.get_file_info(where)):
        return None
    ref, _ = manager.load_checkpoint(data_dir, out_fs)
    return DoneIds(ctx.checkpoint_config, ref) if ref is not None else None


@dataclass(frozen=True)
class ReadUnit:
    """One read task: some consecutive row groups of one file."""

    path: str
    row_groups: tuple[int, ...]
    rows: int


def plan_units(inputs: InputFiles, unit_rows: int = UNIT_ROWS) -> list[ReadUnit]:
    """Cut every file into read units along its row groups (a row group is never split)."""
    units = []
    for path, sizes in zip(inputs.files, inputs.row_groups, strict=True):
        group: list[int] = []
        rows = 0
        for i, n in enumerate(sizes):
            if group and rows + n > unit_rows:
                units.append(ReadUnit(path, tuple(group), rows))
                group, rows = [], 0
            group.append(i)
            rows += n
        if group and rows:
            units.append(ReadUnit(path, tuple(group), rows))
    return units


class ParquetDocs(Datasource):
    """Ray Data datasource over read units; each task yields tables of at most `block_rows` rows."""

    def __init__(
        self,
        units: list[ReadUnit],
        fs: pafs.FileSystem,
        columns: list[str],
        schema: pa.Schema,
        block_rows: int,
        on_bad_file: str,
        tally: str | None = None,
        done: DoneIds | None = None,
    ) -> None:
        super().__init__()
        self.units = units
        self.fs = fs
        self.columns = columns
        self.schema = pa.schema([schema.field(c) for c in columns])
        self.block_rows = block_rows
        self.on_bad_file = on_bad_file
        self.tally = tally
        self.done = done

    def get_name(self) -> str:
        return "ParquetDocs"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        read = partial(
            read_unit,
            fs=self.fs,
            columns=self.columns,
            schema=self.schema,
            block_rows=self.block_rows,
            on_bad_file=self.on_bad_file,
            tally=self.tally,
            done=self.done,
        )
        return [
            ReadTask(
                partial(read, unit),
                BlockMetadata(num_rows=unit.rows, size_bytes=None, input_files=(unit.path,), exec_stats=None),
                schema=self.schema,
                per_task_row_limit=per_task_row_limit,
            )
            for unit in self.units
        ]


def read_unit(
    unit: ReadUnit,
    *,
    fs: pafs.FileSystem,
    columns: list[str],
    schema: pa.Schema,
    block_rows: int,
    on_bad_file: str,
    tally: str | None,
    done: DoneIds | None = None,
) -> Iterator[pa.Table]:
    read = 0
    try:
        with fs.open_input_file(unit.path) as f:
            batches = pq.ParquetFile(f).iter_batches(
                batch_size=block_rows, row_groups=list(unit.row_groups), columns=columns, use_threads=False
            )
            for batch in batches:
                table = pa.Table.from_batches([batch])
                if table.schema != schema:
                    table = table.select(columns).cast(schema)
                read += table.num_rows
                if done is not None:
                    table = done.drop(table)
                if table.num_rows:
                    yield table
    except Exception as exc:  # noqa: BLE001 - sorted below: transient, or a bad file
        if is_transient(exc):
            raise StorageError("reading", unit.path, exc) from None
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        if on_bad_file == "fail":
            raise InputError(
                f"input file {unit.path} became unreadable after the check at the start ({reason}); "
                "nothing was published. Restore the file and run again (the run resumes), or set "
                "input.on_bad_file: skip"
            ) from None
        skipped = unit.rows - read
        report(tally, {"skipped_rows": skipped})
        note(tally, "skipped_files", {"path": unit.path, "reason": reason, "rows": skipped})
