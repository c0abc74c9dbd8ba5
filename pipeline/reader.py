"""The read stage: the checked input files, as blocks of `docs_per_batch` rows.

A Ray Data datasource of our own rather than `read_parquet`, because the job has already
read every footer (`pipeline.inputs`): read tasks are planned from that list with no
listing task, blocks come out at the batch size with no repartition step (so the read
fuses with tokenization into one CPU task), and a file that vanished or broke after the
check is named, or skipped and counted under `on_bad_file: skip`. A transient storage
error is never taken for a bad file: it fails the task as a `StorageError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from pipeline.inputs import InputError, InputFiles
from pipeline.storage import StorageError, is_transient
from pipeline.tally import note, report

UNIT_ROWS = 50_000  # row groups are gathered into read tasks of about this many rows


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
    ) -> None:
        super().__init__()
        self.units = units
        self.fs = fs
        self.columns = columns
        self.schema = pa.schema([schema.field(c) for c in columns])
        self.block_rows = block_rows
        self.on_bad_file = on_bad_file
        self.tally = tally

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
) -> Iterator[pa.Table]:
    done = 0
    try:
        with fs.open_input_file(unit.path) as f:
            batches = pq.ParquetFile(f).iter_batches(
                batch_size=block_rows, row_groups=list(unit.row_groups), columns=columns, use_threads=False
            )
            for batch in batches:
                table = pa.Table.from_batches([batch])
                if table.schema != schema:
                    table = table.select(columns).cast(schema)
                done += table.num_rows
                yield table
    except Exception as exc:  # noqa: BLE001 - sorted below: transient, or a bad file
        if is_transient(exc):
            raise StorageError("read", unit.path, exc) from None
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        if on_bad_file == "fail":
            raise InputError(
                f"input file {unit.path} became unreadable after the check at the start ({reason}); "
                "nothing was published. Restore the file and run again (the run resumes), or set "
                "input.on_bad_file: skip"
            ) from None
        skipped = unit.rows - done
        report(tally, {"skipped_rows": skipped})
        note(tally, "skipped_files", {"path": unit.path, "reason": reason, "rows": skipped})
