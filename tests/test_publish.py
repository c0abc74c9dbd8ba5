"""The staged output after every half-finished step: a rerun always ends with one complete night,
every data file exactly once, no staging left, and never overwrites what it must not."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.publish import REPORT, SUCCESS, OutputError, Publisher

FINGERPRINT = {"config_hash": "abc", "date": "2026-11-28"}


class Killed(BaseException):
    """The process died here (BaseException: nothing in the publisher may swallow it)."""


class DiesAt(pafs.FileSystemHandler):
    """The local filesystem, except that its `after`-th change (write, move, delete) never happens."""

    def __init__(self, after: int) -> None:
        self.fs, self.after, self.changes = pafs.LocalFileSystem(), after, 0

    def _change(self) -> None:
        self.changes += 1
        if self.changes > self.after:
            raise Killed()

    def get_type_name(self):
        return "dies-at"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._change()
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._change()
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._change()
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("no")

    def delete_file(self, path):
        self._change()
        self.fs.delete_file(path)

    def move(self, src, dest):
        self._change()
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self._change()
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._change()
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        self._change()
        return self.fs.open_append_stream(path, metadata=metadata)


def night(pub: Publisher, files: int = 3) -> str:
    """What `batch.run` does with the publisher; returns how it ended."""
    if pub.complete():
        pub.tidy()
        return "already_complete"
    pub.begin(FINGERPRINT)
    if not pub.written():
        for i in range(files):  # Ray Data's writer; a real resume writes only what is missing
            path = f"{pub.data}/part-{i}.parquet"
            if pub.fs.get_file_info(path).type != pafs.FileType.File:
                with pub.fs.open_output_stream(path) as f:
                    pq.write_table(pa.table({"id": [i]}), f)
        pub.mark_written()
    pub.publish({"output_rows": files})
    return "complete"


def _state(root) -> dict:
    names = sorted(p.name for p in root.iterdir())
    ids = sorted(pq.read_table(root).column("id").to_pylist()) if SUCCESS in names else None
    return {"names": names, "ids": ids}


def test_a_rerun_completes_the_night_after_a_kill_at_every_step(tmp_path):
    clean = tmp_path / "clean"
    assert night(Publisher(pafs.LocalFileSystem(), str(clean))) == "complete"
    want = _state(clean)
    assert want["names"] == sorted([REPORT, SUCCESS, "part-0.parquet", "part-1.parquet", "part-2.parquet"])
    assert want["ids"] == [0, 1, 2]
    steps = DiesAt(10**9)
    night(Publisher(pafs.PyFileSystem(steps), str(tmp_path / "count")))

    for after in range(steps.changes):
        root = tmp_path / f"killed-{after}"
        with pytest.raises(Killed):
            night(Publisher(pafs.PyFileSystem(DiesAt(after)), str(root)))
        half_done = _state(root) if root.exists() else None
        assert half_done is None or SUCCESS not in half_done["names"] or after >= steps.changes - 1, (
            f"_SUCCESS visible before the night was whole (killed after {after} changes)"
        )
        ended = night(Publisher(pafs.LocalFileSystem(), str(root)))
        assert _state(root) == want, f"killed after {after} changes, then rerun ({ended})"
        assert night(Publisher(pafs.LocalFileSystem(), str(root))) == "already_complete"


def test_an_unfinished_night_of_another_config_or_foreign_files_are_refused(tmp_path):
    fs = pafs.LocalFileSystem()
    pub = Publisher(fs, str(tmp_path / "a"))
    assert pub.begin(FINGERPRINT) is False
    assert pub.begin(FINGERPRINT) is True  # resumes its own unfinished run
    with pytest.raises(OutputError, match="another config"):
        Publisher(fs, str(tmp_path / "a")).begin({**FINGERPRINT, "config_hash": "other"})

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "someone-elses.parquet").write_bytes(b"x")
    with pytest.raises(OutputError, match="--overwrite"):
        Publisher(fs, str(tmp_path / "b")).begin(FINGERPRINT)
    Publisher(fs, str(tmp_path / "b")).clear()
    assert not list((tmp_path / "b").iterdir())


def test_checkpointed_counts_committed_ids_only(tmp_path):
    fs = pafs.LocalFileSystem()
    pub = Publisher(fs, str(tmp_path))
    pub.begin(FINGERPRINT)
    fs.create_dir(pub.checkpoint, recursive=True)
    pq.write_table(pa.table({"id": list(range(7))}), f"{pub.checkpoint}/a.parquet")
    pq.write_table(pa.table({"id": list(range(5))}), f"{pub.checkpoint}/b.pending.parquet")
    assert pub.checkpointed() == 7
    assert json.loads((tmp_path / "_staging" / "run.json").read_text()) == FINGERPRINT
