"""The nightly job submitted through the Ray Job Submission API to a real local head."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import batch_config, read_output, write_corpus

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_submit_runs_the_nightly_job_on_the_cluster(ray_cluster, tiny_models, tmp_path):
    ids = write_corpus(tmp_path / "in", n_files=2, rows_per_file=40)
    cfg = batch_config(
        *tiny_models, str(tmp_path / "in"), str(tmp_path / "out" / "dt={date}"), tmp_path / "cache"
    )
    (tmp_path / "nightly.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "pipeline.cli", "submit", str(tmp_path / "nightly.yaml")]
    cmd += ["--address", ray_cluster.dashboard, "--date", "2026-11-27", "--working-dir", str(ROOT)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "SUCCEEDED" in done.stdout and "documents this run" in done.stdout
    night = tmp_path / "out" / "dt=2026-11-27"
    assert (night / "_SUCCESS").exists()
    assert [r["id"] for r in read_output(night)] == sorted(ids)
