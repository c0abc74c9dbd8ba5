"""A night is published only when it is good: row errors are counted by message from the
night's output, and a night over `output.max_error_rate` stays staged and exits 3. Models that
would fail every row are refused at load, before Ray starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import batch_config, read_output, write_corpus
from fault_hooks import POISON

from pipeline.cli import main
from pipeline.row_errors import ErrorCounts, kind_of, over_budget

TESTS = Path(__file__).resolve().parent


# -- counting and the budget (no Ray) -----------------------------------------------------------
def test_errors_are_grouped_by_message_and_kind_with_sample_ids():
    counts = ErrorCounts()
    errors = (
        ["inference failed: IndexError: index out of range in self"] * 5
        + ["text is null"] * 2
        + [
            "text has 12 characters, more than runtime.max_chars (10)",
            "text has 99 characters, more than runtime.max_chars (10)",
        ]
        + ["decode failed: KeyError: 7"]
        + [None] * 90
    )
    counts.add(len(errors), errors, list(range(100, 100 + len(errors))))
    assert counts.rows == 100 and counts.failed == 6 and counts.input_errors == 4
    top = counts.top()
    assert [(g["kind"], g["count"]) for g in top] == [
        ("inference", 5),
        ("input", 2),
        ("input", 2),
        ("decode", 1),
    ]
    assert top[0]["sample_ids"] == [100, 101, 102], "a few ids, not all"
    assert top[2]["message"].startswith("text has 12 characters"), "one group whatever the numbers"
    assert kind_of("tokenization failed: Exception: x") == "tokenization"
    assert kind_of("something new") == "other", "an unknown message counts as a failure"

    assert over_budget(counts, 0.10, None) is None
    refused, key = over_budget(counts, 0.05, None) or ("", "")
    assert key == "output.max_error_rate" and refused.startswith(
        "6 of 100 rows (6.00%) failed, over output.max_error_rate (5.00%)"
    )
    assert "5x 'inference failed: IndexError: index out of range in self'" in refused
    assert "text is null" not in refused, "input problems are counted apart"
    refused, key = over_budget(counts, 0.10, 0.01) or ("", "")
    assert (
        key == "output.max_input_error_rate"
        and "had input problems, over output.max_input_error_rate" in refused
    )


def test_error_groups_stay_bounded():
    counts = ErrorCounts()
    counts.add(
        5000,
        [f"decode failed: ValueError: {chr(65 + i % 26)}{i}x" * 2 for i in range(5000)],
        list(range(5000)),
    )
    assert len(counts.groups) <= 1000 and counts.failed == 5000
    assert sum(g["count"] for g in counts.top(n=2000)) == 5000


# -- refused at load ---------------------------------------------------------------------------
def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


@pytest.fixture(scope="module")
def small_vocab_classifier(tmp_path_factory, tiny_models) -> Path:
    """A classifier whose embedding table has 1,000 rows, saved with a 30,522-id tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(str(tiny_models[0]))
    config.vocab_size = 1000
    out = tmp_path_factory.mktemp("smallvocab") / "classifier"
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    _copy_tokenizer(tiny_models[0], out)
    return out


@pytest.fixture(scope="module")
def relabeled_head(tmp_path_factory, tiny_models) -> Path:
    """The tiny classifier (4 outputs) with a config that names 3 labels."""
    out = tmp_path_factory.mktemp("relabeled") / "classifier"
    shutil.copytree(tiny_models[0], out)
    config = json.loads((out / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(["a", "b", "c"])}
    config["label2id"] = {name: i for i, name in enumerate(["a", "b", "c"])}
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    "model, message",
    [
        ("small_vocab_classifier", "emits ids up to 30521 but the model's embedding table has 1000 rows"),
        ("relabeled_head", "has 3 labels in its config (id2label) but its classification head has 4 outputs"),
    ],
)
def test_a_model_that_would_fail_every_row_is_refused_before_ray_starts(
    request, tmp_path, capsys, model, message
):
    import ray

    source = request.getfixturevalue(model)
    write_corpus(tmp_path / "in", n_files=1, rows_per_file=10)
    cfg = batch_config(source, None, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    path = tmp_path / "night.yaml"
    path.write_text(yaml.safe_dump(cfg))
    was_up = ray.is_initialized()
    capsys.readouterr()  # what building the models printed
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: models.classifier: ") and message in err, err
    assert "\n" not in err, "one line"
    assert ray.is_initialized() == was_up, "refused before Ray starts"
    assert not (tmp_path / "out").exists(), "nothing was staged"


# -- a night's budget, on a real cluster, with faults planted in its workers --------------------
def _night(cluster, tmp_path: Path, tiny_models, hook: str, *sets: str, **extra) -> tuple[int, str]:
    """`pipeline run` in a driver of its own whose job runs `hook` in every worker process."""
    path = tmp_path / "night.yaml"
    if not path.exists():
        cfg = batch_config(
            *tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache", **extra
        )
        path.write_text(yaml.safe_dump(cfg))
    runtime_env = {"worker_process_setup_hook": f"fault_hooks.{hook}", "env_vars": {"PYTHONPATH": str(TESTS)}}
    driver = (
        "import sys, ray\n"
        f"ray.init(address={cluster.address!r}, runtime_env={runtime_env!r})\n"
        "from pipeline.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["run", str(path), "--show", "0"] + [a for s in sets for a in ("--set", s)]
    done = subprocess.run(
        [sys.executable, "-c", driver, *args], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    "hook, message",
    [
        ("forward_raises", "inference failed: IndexError: index out of range in self"),
        ("decode_raises", "decode failed: KeyError: 'label id 7 is not in the label map'"),
    ],
)
def test_a_night_whose_every_row_failed_is_not_published(ray_cluster, tiny_models, tmp_path, hook, message):
    ids = write_corpus(tmp_path / "in", n_files=2, rows_per_file=60)
    code, log = _night(ray_cluster, tmp_path, tiny_models, hook)
    assert code == 3, log[-3000:]
    # the one line the run ends with (workers' logs reach the driver's console asynchronously)
    last = next((line for line in log.splitlines() if line.startswith("error: ")), "")
    n = len(ids)
    assert last.startswith("error: not published: "), log[-3000:]
    assert "over output.max_error_rate (1.00%)" in last, last
    assert "--set output.max_error_rate=" in last
    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists() and not list(out.glob("*.parquet")), "nothing published"
    held = json.loads((out / "_staging" / "_report.json").read_text())
    assert held["status"] == "refused" and held["output_rows"] == n
    assert held["failed_rows"] + held["input_errors"] == held["errors"] == n
    assert held["error_rate"] > 0.9 and held["max_error_rate"] == 0.01
    assert held["top_errors"][0]["message"] == message
    assert f"{held['failed_rows']}x {message!r}" in last, last
    assert len(held["top_errors"][0]["sample_ids"]) == 3
    if hook == "decode_raises":
        return  # refused alike; what follows is the same for any refused night (CI time)
    # the worker logged the first failures with their traceback
    worker_logs = "".join(
        p.read_text(errors="replace") for p in Path(ray_cluster.session_dir, "logs").glob("worker-*.err")
    )
    assert "a row's inference failed" in worker_logs and "Traceback" in worker_logs

    # the same command refuses again, at once; a raised limit publishes the staged night as it is
    again, log = _night(ray_cluster, tmp_path, tiny_models, hook)
    assert again == 3 and "error: not published" in log
    code, log = _night(ray_cluster, tmp_path, tiny_models, hook, "output.max_error_rate=1")
    assert code == 0, log[-3000:]
    report = json.loads((out / "_report.json").read_text())
    assert (
        report["status"] == "complete"
        and report["resumed"] is True
        and report["failed_rows"] == held["failed_rows"]
    )
    assert sorted(r["id"] for r in read_output(out)) == sorted(ids)


def test_a_handful_of_bad_rows_under_the_limit_publishes_and_is_reported(ray_cluster, tiny_models, tmp_path):
    ids = write_corpus(tmp_path / "in", n_files=2, rows_per_file=150)
    first = pq.read_table(tmp_path / "in" / "part-000.parquet").slice(0, 2)
    texts = pa.array([f"{POISON} one", f"two {POISON}"], pa.string())
    poisoned = first.set_column(0, "id", pa.array([10_000, 10_001], pa.int64())).set_column(1, "text", texts)
    pq.write_table(poisoned, tmp_path / "in" / "part-poison.parquet")
    code, log = _night(ray_cluster, tmp_path, tiny_models, "poisoned_rows")
    assert code == 0, log[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "_report.json").read_text())
    assert report["status"] == "complete" and report["failed_rows"] == 2
    assert (
        report["errors_by_kind"]["decode"] == 2
        and report["input_errors"] == report["errors_by_kind"]["input"] > 0
    )
    poison = next(g for g in report["top_errors"] if g["kind"] == "decode")
    assert poison == {
        "message": "decode failed: ValueError: a poisoned row",
        "kind": "decode",
        "count": 2,
        "sample_ids": poison["sample_ids"],
    }
    assert sorted(poison["sample_ids"]) == [10_000, 10_001]
    assert (
        "(2 failed = 0.66%, limit 1.00%;" in log and "2x 'decode failed: ValueError: a poisoned row'" in log
    )
    rows = read_output(out)
    assert sorted(r["id"] for r in rows) == sorted(ids + [10_000, 10_001])
    assert sum(r["error"] is None for r in rows) == len(rows) - report["errors"], "the others are labeled"
