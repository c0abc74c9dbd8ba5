"""The `pipeline` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from pipeline import ort_engine
from pipeline.models import cpu_has_fast_bf16


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # spawns the command
def test_annotate_prints_one_json_line_per_text(tiny_models, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(*tiny_models)))
    out = run_cli("annotate", "--config", str(cfg), "Angela Merkel met Tim Cook in Berlin.", "")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 2
    assert set(rows[0]) == {"label", "label_score", "entities", "error"}
    assert rows[0]["error"] is None and rows[0]["entities"]

    out = run_cli("annotate", "-c", str(cfg), "-", stdin="one\ntwo\nthree\n")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3


@pytest.mark.slow  # spawns the command
def test_config_errors_exit_2_with_the_key(tiny_models, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(*tiny_models)))
    out = run_cli("annotate", "-c", str(cfg), "--set", "runtime.dtype=fp8", "x")
    assert out.returncode == 2 and "runtime.dtype" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("annotate", "-c", str(cfg), "--set", "models.ner.source=/does/not/exist", "x")
    assert out.returncode == 2 and "/does/not/exist" in out.stderr and "Traceback" not in out.stderr


def _relative_project(tmp_path, tiny_models) -> Path:
    """A project folder whose config names its models, input and output by relative paths."""
    import shutil

    from conftest import write_corpus

    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    for name, src in zip(("cls", "ner"), tiny_models, strict=True):
        shutil.copytree(src, project / "models" / name)
    write_corpus(project / "data", n_files=1, rows_per_file=30)
    cfg = tiny_config(project / "x", project / "y")
    cfg["models"]["classifier"]["source"] = "../models/cls"
    cfg["models"]["ner"]["source"] = "../models/ner"
    cfg["ray"] = {"infer_actors": 1, "cpus_per_actor": 0.5, "cpus_per_task": 0.25, "docs_per_batch": 16}
    cfg["input"] = {"path": "../data"}
    cfg["output"] = {"path": "../out/dt={date}", "min_rows_per_file": 10, "max_rows_per_file": 100}
    cfg["cache_dir"] = "../cache"
    (project / "conf" / "night.yaml").write_text(yaml.safe_dump(cfg))
    return project


@pytest.mark.slow  # spawns the command
def test_a_missing_model_fails_in_one_line_before_ray_starts(tiny_models, tmp_path):
    project = _relative_project(tmp_path, tiny_models)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cfg = str(project / "conf" / "night.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", cfg, "--set", "models.ner.source=models/ner/gone"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=elsewhere,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == ["error: model directory 'models/ner/gone' does not exist"]
    assert "Ray" not in out.stdout + out.stderr and not (project / "out").exists()


def test_run_from_another_directory_resolves_paths_against_the_config(ray_cluster, tiny_models, tmp_path):
    import pyarrow.parquet as pq

    project = _relative_project(tmp_path, tiny_models)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(project / "conf" / "night.yaml")]
    cmd += ["--date", "2026-11-28", "--address", ray_cluster.address, "--show", "0"]
    cmd += ["--set", "runtime.dtype=auto"]  # with no tune verdict in the project's cache
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=elsewhere)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    night = project / "out" / "dt=2026-11-28"
    assert (night / "_SUCCESS").exists() and not list(elsewhere.iterdir())
    assert pq.read_table(night).num_rows == 30
    # auto ran its unmeasured default where tuning has a variant to try: the summary says how to tune
    tunable = ort_engine.available() or cpu_has_fast_bf16()
    said = "untuned: classifier, ner ran dtype auto's unmeasured default" in out.stdout + out.stderr
    assert said == tunable and ("pipeline models tune CONFIG" in out.stdout + out.stderr) == tunable
    # Our own concise lines, not Ray Data's per-operator progress blocks.
    assert "Operator" not in out.stdout and "Running Dataset" not in out.stdout + out.stderr, out.stdout
