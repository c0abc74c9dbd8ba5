"""Staged output: a night's files appear under the output path only when the run is complete.

Layout under the output path:
    _staging/run.json        which config started the unfinished run (resume must match)
    _staging/checkpoint/     Ray Data's checkpoint of written ids
    _staging/data/           Parquet files being written
    _staging/WRITTEN         all data written; only the publish step is left
    *.parquet, _report.json  the published night
    _SUCCESS                 written last; downstream jobs wait on it

Readers that skip `_`-prefixed paths (pyarrow, Spark, Ray) never see staged files, and a
reader that waits for `_SUCCESS` never sees a half-written night.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from pipeline.storage import join

SUCCESS = "_SUCCESS"
REPORT = "_report.json"


class OutputError(RuntimeError):
    """The output path is in a state the job will not touch without --overwrite."""


class Publisher:
    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root
        self.staging = join(root, "_staging")
        self.data = join(self.staging, "data")
        self.checkpoint = join(self.staging, "checkpoint")

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _write(self, path: str, text: str) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(text.encode())

    def _read(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def _listing(self, path: str) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))

    def complete(self) -> bool:
        return self._exists(join(self.root, SUCCESS))

    def report(self) -> dict[str, Any]:
        try:
            return json.loads(self._read(join(self.root, REPORT)))
        except (OSError, ValueError):
            return {}

    def clear(self) -> None:
        """--overwrite: remove the whole night (published files and any staging)."""
        if self._exists(self.root):
            self.fs.delete_dir_contents(self.root, missing_dir_ok=True)

    def begin(self, fingerprint: dict[str, Any]) -> bool:
        """Start or resume a staged run; True when resuming an unfinished one."""
        run_file = join(self.staging, "run.json")
        if self._exists(run_file):
            previous = json.loads(self._read(run_file))
            if previous.get("config_hash") != fingerprint.get("config_hash"):
                raise OutputError(
                    f"{self.root} holds an unfinished run started with another config "
                    f"(hash {previous.get('config_hash')}, now {fingerprint.get('config_hash')}); "
                    "rerun with --overwrite to start over"
                )
            before, now = previous.get("models") or {}, fingerprint.get("models") or {}
            changed = sorted(n for n in before if n in now and before[n] != now[n])
            if changed:
                name = changed[0]
                raise OutputError(
                    f"{self.root} holds an unfinished run labeled by {name} revision {before[name]}, "
                    f"but the model is now {now[name]}; resuming would mix two revisions in one night: "
                    "rerun with --overwrite to label the whole night with the new one"
                )
            return True
        foreign = [i.path for i in self._listing(self.root) if not i.base_name.startswith(("_", "."))]
        if foreign:
            raise OutputError(
                f"{self.root} already holds {len(foreign)} file(s) but no {SUCCESS} marker "
                f"(e.g. {foreign[0]}); rerun with --overwrite to replace them"
            )
        self.fs.create_dir(self.data, recursive=True)
        self._write(run_file, json.dumps(fingerprint))
        return False

    def checkpointed(self) -> int:
        """Rows whose ids Ray Data's checkpoint has committed (what a resume skips)."""
        import pyarrow.parquet as pq

        total = 0
        for info in self._listing(self.checkpoint):
            if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
                if info.path.endswith(".pending.parquet"):  # an unfinished write: redone on resume
                    continue
                with self.fs.open_input_file(info.path) as f:
                    total += pq.ParquetFile(f).metadata.num_rows
        return total

    def written(self) -> bool:
        return self._exists(join(self.staging, "WRITTEN"))

    def mark_written(self) -> None:
        self._write(join(self.staging, "WRITTEN"), "")

    def _parquet(self, path: str) -> list[str]:
        return sorted(
            i.path
            for i in self._listing(path)
            if i.type == pafs.FileType.File and i.path.endswith(".parquet")
        )

    def data_files(self) -> list[str]:
        """Every data file of the night: staged ones and any a cut-short publish already moved."""
        return self._parquet(self.data) + self._parquet(self.root)

    def publish(self, report: dict[str, Any]) -> list[str]:
        """Move staged files into place, write the report, then _SUCCESS, then drop the staging.

        Cut short anywhere, a rerun finishes it: before _SUCCESS the staging (and its run.json)
        is still there, so the rerun resumes and publishes what is left; after it, the night
        is complete and the rerun only removes the leftover staging.
        """
        for path in self._parquet(self.data):
            self.fs.move(path, join(self.root, path.rsplit("/", 1)[-1]))
        self._write(join(self.root, REPORT), json.dumps(report, indent=2))
        self._write(join(self.root, SUCCESS), json.dumps(report))
        self.tidy()
        return self._parquet(self.root)

    def hold(self, report: dict[str, Any]) -> str:
        """Keep a night that may not be published staged, with its report beside it: a rerun
        publishes it (limits raised) or --overwrite redoes it. Returns the report's path."""
        path = join(self.staging, REPORT)
        self._write(path, json.dumps(report, indent=2))
        return path

    def tidy(self) -> None:
        """Remove the staging of a published night (left behind when a publish was cut short)."""
        if self._exists(self.staging):
            self.fs.delete_dir(self.staging)
