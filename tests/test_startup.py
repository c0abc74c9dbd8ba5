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
        checked = idcheck.start_id_check(inputs, fs, "id", 0.5)()
        out[name] = [checked.ids, checked.tasks]
    except InputError as exc:
        out[name] = str(exc)
from ray.data import DataContext
from ray.data.checkpoint import CheckpointConfig
from pipeline.reader import done_ids

ctx = DataContext.get_current().copy()
for name in ("missing", "empty"):
    folder = f"{sys.argv[1]}/{name}-checkpoint"
    if name == "empty":
        fs.create_dir(folder)
    ctx.checkpoint_config = CheckpointConfig(id_column="id", checkpoint_path=folder, override_filesystem=fs)
    out[f"done_ids {name}"] = done_ids(ctx, f"{sys.argv[1]}/data", fs)
out["ray"] = ray.is_initialized()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_small_nights_id_check_and_first_resume_point_need_no_ray(tmp_path):
    """One share of ids (two files here) is checked where the driver is, before Ray is up, so
    it overlaps Ray's start: the verdicts are the cluster check's, and no Ray starts for it.
    A night with no checkpoint file yet has nothing written, said from one listing: Ray's
    cleaning task, which a first night waited for, does not run."""
    code = subprocess.run(
        [sys.executable, "-c", ID_CHECK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,  # a few seconds; Ray asked for would wait on the closed port until then
        env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"},
    )
    assert code.returncode == 0, code.stderr[-3000:]
    out = json.loads(code.stdout.strip().splitlines()[-1])
    assert out["clean"] == [5, 0], "five ids, no task"
    assert out["repeat"].startswith("1 ids occur more than once in column 'id' (e.g. 2)"), out
    assert out["null"].startswith("1 input rows have a null 'id'"), out
    assert out["done_ids missing"] is None and out["done_ids empty"] is None
    assert out["ray"] is False, "nothing asked for Ray"


def test_a_rerun_after_an_unfinished_write_still_cleans_and_skips_the_committed_ids(ray_cluster, tmp_path):
    """Once a write left a pending checkpoint, the short cut of a first night does not apply:
    Ray's cleaning runs, the data file of that unfinished write goes, and committed ids are
    what a rerun skips."""
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
    checkpoint.mkdir()
    data.mkdir()

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
