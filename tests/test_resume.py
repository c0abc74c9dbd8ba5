"""A driver killed mid-run (SIGKILL) resumes with the same command; every id lands exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml
from conftest import batch_config, read_output, write_corpus
from pyarrow.fs import LocalFileSystem

from pipeline.publish import Publisher


def test_sigkilled_driver_resumes_where_it_stopped(ray_cluster, tiny_models, tmp_path):
    ids = write_corpus(tmp_path / "in", n_files=6, rows_per_file=120)
    out = tmp_path / "out"
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(out), tmp_path / "cache")
    cfg["ray"]["docs_per_batch"] = 50
    cfg["output"].update(min_rows_per_file=50, max_rows_per_file=100)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        str(tmp_path / "c.yaml"),
        "--address",
        ray_cluster.address,
    ]
    cmd += ["--show", "0"]

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    staged = out / "_staging" / "data"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if staged.exists() and len(list(staged.glob("*.parquet"))) >= 3:
            break
        time.sleep(0.2)
    assert first.poll() is None, (
        f"the first run ended before it could be killed:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    written_before = len(list(staged.glob("*.parquet")))
    assert written_before >= 3 and not (out / "_SUCCESS").exists()
    durable = Publisher(LocalFileSystem(), str(out)).checkpointed()  # ids committed before the kill
    assert durable > 0

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout
    assert (out / "_SUCCESS").exists()
    rows = read_output(out)
    assert [r["id"] for r in rows] == sorted(ids), "each input id exactly once after the resume"
    import json

    report = json.loads((out / "_report.json").read_text())
    assert report["resumed"] is True
    assert report["documents"] == len(ids) - durable, "the rerun labels exactly what was not yet written"
