"""Start-up phases are measured from the command's start, even when a shell exec'ed it; the
short cuts that took work off start-up's critical path keep their meaning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import pipeline
from pipeline import startup


def test_phases_count_from_the_process_start_or_from_the_import_when_a_shell_execed_it(monkeypatch):
    started = startup.process_started_at()
    assert 0 <= time.time() - started < 24 * 3600, "this process started when /proc says"
    monkeypatch.setattr(pipeline, "IMPORTED_AT", started + 0.5)
    assert startup.command_started_at() == started, "imported soon after the start: the process's start"
    monkeypatch.setattr(pipeline, "IMPORTED_AT", started + 120)
    assert startup.command_started_at() == started + 120, "a long-lived shell's process: the import"
    phases = startup.Phases()
    phases.mark("b", phases.t0 + 2)
    phases.mark("a", phases.t0 + 1)
    assert phases.report() == {"a": 1.0, "b": 2.0}


ID_CHECK = """
import json, sys
import pyarrow as pa, pyarrow.fs as pafs, pyarrow.parquet as pq, ray
from pipeline import idcheck
from pipeline.inputs import InputError, discover, inspect

fs, out = pafs.LocalFileSystem(), {}
for name, ids in (("clean", [[1, 2, 3], [4, 5]]), ("repeat", [[1, 2, 3], [4, 2]]), ("null", [[1, None], [3]])):
    root = f"{sys.argv[1]}/{name}"
    fs.create_dir(root)
    for k, part in enumerate(ids):
        pq.write_table(pa.table({"id": pa.array(part, pa.int64()), "text": ["x"] * len(part)}), f"{root}/{k}.parquet")
    inputs = inspect(discover(root, fs), fs, ["id", "text"], "fail", "id")
    try:
        checked = idcheck.check_unique_ids(inputs, fs, "id", 0.5)
        out[name] = [checked.ids, checked.tasks]
    except InputError as exc:
        out[name] = str(exc)
out["ray"] = ray.is_initialized()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_small_inputs_id_check_runs_in_the_driver_without_ray(tmp_path):
    """One share of ids (two files here) is checked where the driver is, before Ray is up, so
    it overlaps Ray's start: the verdicts are the cluster check's, and no Ray starts for it."""
    code = subprocess.run(
        [sys.executable, "-c", ID_CHECK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"},  # were Ray asked for, it would fail
    )
    assert code.returncode == 0, code.stderr[-3000:]
    out = json.loads(code.stdout.strip().splitlines()[-1])
    assert out["clean"] == [5, 0], "five ids, no task"
    assert out["repeat"].startswith("1 ids occur more than once in column 'id' (e.g. 2)"), out
    assert out["null"].startswith("1 input rows have a null 'id'"), out
    assert out["ray"] is False


def test_a_first_nights_resume_point_is_found_without_a_task_and_a_rerun_still_cleans(ray_cluster, tmp_path):
    """A night with no checkpoint file yet has nothing written: `done_ids` says so from one
    listing. Once a write left a pending checkpoint, Ray's cleaning still runs: the data file
    of that unfinished write goes, and committed ids are what a rerun skips."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    import ray
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    from pipeline.reader import done_ids

    fs = pafs.LocalFileSystem()
    checkpoint, data = tmp_path / "checkpoint", tmp_path / "data"
    ctx = DataContext.get_current().copy()
    ctx.checkpoint_config = CheckpointConfig(
        id_column="id", checkpoint_path=str(checkpoint), override_filesystem=fs
    )
    assert done_ids(ctx, str(data), fs) is None, "nothing there: nothing written"
    checkpoint.mkdir()
    data.mkdir()
    assert done_ids(ctx, str(data), fs) is None, "an empty checkpoint folder: nothing written"

    pq.write_table(pa.table({"id": [7, 8]}), checkpoint / "w1.pending.parquet")
    pq.write_table(pa.table({"id": [7, 8]}), data / "w1_000000.parquet")  # that write's file
    assert done_ids(ctx, str(data), fs) is None, "an unfinished write only: nothing written"
    assert not list(data.iterdir()) and not list(checkpoint.iterdir()), "and it was cleaned away"

    pq.write_table(pa.table({"id": [7, 8]}), checkpoint / "w1.pending.parquet")
    pq.write_table(pa.table({"id": [7, 8]}), data / "w1_000000.parquet")
    pq.write_table(pa.table({"id": [3, 1, 2]}), checkpoint / "w0.parquet")  # a committed write
    pq.write_table(pa.table({"id": [3, 1, 2]}), data / "w0_000000.parquet")
    done = done_ids(ctx, str(data), fs)
    assert done is not None
    assert np.asarray(ray.get(done.ref)).tolist() == [1, 2, 3], "the committed ids, sorted"
    assert sorted(p.name for p in data.iterdir()) == ["w0_000000.parquet"], "the unfinished write is gone"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["w0.parquet"]
