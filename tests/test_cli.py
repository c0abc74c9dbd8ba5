"""The `pipeline` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from conftest import tiny_config


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


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


def test_config_errors_exit_2_with_the_key(tiny_models, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(*tiny_models)))
    out = run_cli("annotate", "-c", str(cfg), "--set", "runtime.dtype=fp8", "x")
    assert out.returncode == 2 and "runtime.dtype" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("annotate", "-c", str(cfg), "--set", "models.ner.source=/does/not/exist", "x")
    assert out.returncode == 2 and "/does/not/exist" in out.stderr and "Traceback" not in out.stderr
