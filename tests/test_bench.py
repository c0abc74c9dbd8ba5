"""The benchmarks run end to end in a reduced size (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models import cpu_has_fast_bf16

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_bench_smoke(ray_cluster, tmp_path):
    """Every contender but `ours-run`, which is `pipeline run` itself (tested throughout the
    suite; ~25 s of Ray Data start-up here, CI time)."""
    import os

    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}  # one Ray instance per test session
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "bench",  # `pipeline bench throughput`: the bench package installed beside pipeline
        "throughput",
        "--quick",
        "--docs",
        "12",
        "--contenders",
        "baseline-hf",
        "baseline-raydata",
        "ours-annotator",
        "--out",
        str(tmp_path / "bench"),
        "--model-cache",
        str(tmp_path / "models"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "bench" / "throughput.json").read_text())
    rows = {(r["contender"], r["dtype"]) for r in report["results"]}
    assert {("baseline-hf", "fp32"), ("baseline-raydata", "fp32"), ("ours-annotator", "fp32")} <= rows
    assert {("ours-annotator", v) for v in ("ort-fp32", "ort-int8", "auto")} <= rows
    assert (("ours-annotator", "bf16") in rows) == cpu_has_fast_bf16(), "bf16 only where it is native"
    assert report["ratios"]["tiny"]["ort_fp32_over_torch_fp32"] > 0
    for r in report["results"]:
        assert r["docs_per_s"] > 0 and 0 < r["padding_efficiency"] <= 1
        if r["dtype"] in ("fp32", "ort-fp32"):  # same answers: speed is never bought with wrong ones
            assert r["label_agree"] == 1.0 and r["entity_agree"] == 1.0, r
    (auto,) = [r for r in report["results"] if r["dtype"] == "auto"]
    tuned = {v.replace("onnxruntime ", "ort-").replace("torch ", "") for v in auto["tuned"].values()}
    assert auto["ran"] == "/".join(sorted(tuned)), "auto runs what the tune chose"
    assert (tmp_path / "bench" / "throughput.png").stat().st_size > 1000
    assert "| model | contender |" in done.stdout


@pytest.mark.slow
def test_scale_bench_smoke(tmp_path):
    """`pipeline bench scale` end to end on a tiny corpus: its own cluster, the sampler. On the
    single-node layout (two `ray start`s less: CI time); the lost-node tests run multi-node ones."""
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "scale", "--sizes", "1000", "--no-kill"]
    cmd += ["--layout", "single"]
    cmd += ["--out", str(tmp_path / "bench")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "bench" / "scale" / "scale.json").read_text())
    (run,) = report["runs"]
    assert run["report"]["documents"] == 1000 and run["running_docs_per_s"] > 0
    assert run["max_processes"]["raylets"] == 1 and run["max_processes"]["infer_actors"] == 1
    assert run["peak_anon_mib"]["infer_actors"] > 0 and run["forward_s_per_1k"] > 0
    assert run["peak_mib"]["driver"] > 0 and run["series"][-1]["written"] == 1000
    assert (tmp_path / "bench" / "scale" / "scale.png").stat().st_size > 1000
    assert "| documents | layout |" in done.stdout


def test_scale_bench_reads_what_the_models_ran_on_from_the_progress_line(tmp_path):
    """The kill check's "labeled before the kill" comes from the run's own last progress line,
    as the product prints it: the documents through the model, or the labeled ones when the
    model is not ahead."""
    from bench.scale import last_labeled
    from pipeline.progress import line

    log = tmp_path / "killed.log"
    log.write_text("\n".join(["Ray noise", line(0, 100_000, None), line(30_000, 100_000, 2_900.0, 45_000)]))
    assert last_labeled(log) == 45_000
    log.write_text(line(40_000, 100_000, 2_900.0, 40_000) + "\n")
    assert "through the model" not in log.read_text() and last_labeled(log) == 40_000
    log.write_text("no progress line at all\n")
    assert last_labeled(log) == 0


def test_scale_bench_measures_growth_against_both_small_runs():
    """The 1M night is compared with the mean of the 100k nights before and after it, and the
    second 100k night over the first is the session's noise floor."""
    from bench.scale import growth, mean_run

    def run(peak: float, s_per_1k: float) -> dict:
        kinds = {"raylets": peak}
        return {
            "peak_mib": kinds,
            "peak_anon_mib": kinds,
            "largest_process_mib": kinds,
            "running_s_per_1k": s_per_1k,
            "forward_s_per_1k": s_per_1k / 2,
            "forward_cpu_s_per_1k": 0.0,
        }

    first, again, large = run(50.0, 0.40), run(60.0, 0.30), run(66.0, 0.35)
    grown = growth(mean_run([first, again]), large)
    assert grown["peak_mib"]["raylets"] == 1.2 and grown["time_per_doc"] == 1.0
    assert "forward_cpu_per_doc" not in grown  # no CPU figure to divide by
    noise = growth(first, again)
    assert noise["peak_mib"]["raylets"] == 1.2 and noise["time_per_doc"] == 0.75


@pytest.mark.slow
def test_embeddings_bench_smoke(tmp_path):
    """`pipeline bench embeddings` on a few documents: every contender runs and the vectors equal
    sentence-transformers' (no timing is asserted)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "embeddings", "--quick"]
    cmd += ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "embeddings.json")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "embeddings.json").read_text())
    assert {
        "sentence-transformers",
        "ours-embedding",
        "ours-classifier+ner",
        "ours-classifier+ner+embedding",
    } <= set(report["results"])
    assert report["results"]["ours-embedding"]["cosine_min_vs_st"] >= 0.99999
    assert report["ratios"]["embedding_vs_sentence_transformers"] > 0 and "target >= 2" in done.stdout
