"""The nightly batch job on a real Ray cluster: output, lineage, staging, idempotence, bad input."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pyarrow.parquet as pq
import pytest
from conftest import assert_rows_close, batch_config, read_output, read_rows, write_corpus

from pipeline import Annotator, PipelineConfig, batch
from pipeline.inputs import InputError
from pipeline.publish import OutputError


def _run(cfg: dict, **kw) -> dict:
    return batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None, **kw)


def _ids(rows: list[dict]) -> list[int]:
    return [r["id"] for r in rows]


def test_batch_output_equals_in_process_and_keeps_every_column(ray_cluster, tiny_models, tmp_path):
    ids = write_corpus(tmp_path / "in", n_files=3, rows_per_file=120)
    out = tmp_path / "out" / "dt={date}"
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(out), tmp_path / "cache")
    report = _run(cfg, date="2026-11-28")
    night = tmp_path / "out" / "dt=2026-11-28"

    assert report["status"] == "complete" and not report["resumed"]
    assert report["documents"] == report["input_rows"] == report["output_rows"] == len(ids)
    assert (night / "_SUCCESS").exists() and not (night / "_staging").exists()
    assert json.loads((night / "_report.json").read_text())["output_rows"] == len(ids)
    assert 0.3 < report["padding_efficiency"] <= 1 and report["windows"] >= len(ids)
    assert 0 < report["startup_s"] < report["wall_s"]  # when the model got its first batch
    assert report["model_dtypes"] == {"classifier": ["fp32"], "ner": ["fp32"]}
    assert report["untuned_models"] == [], "an explicit dtype is no untuned default"

    rows = read_output(night)
    assert _ids(rows) == sorted(ids), "every id exactly once"
    src = read_rows(pq.read_table(str(tmp_path / "in")))
    for col in ("id", "text", "source", "ts", "tags"):
        assert [r[col] for r in rows] == [r[col] for r in src], col
    assert list(rows[0]) == [
        "id",
        "text",
        "source",
        "ts",
        "tags",
        "label",
        "label_score",
        "entities",
        "error",
    ]

    # same answers as the in-process Annotator (same encode/infer/decode code)
    ann = Annotator(PipelineConfig.from_dict(batch_config(*tiny_models, "x", "y", tmp_path / "c")))
    assert_rows_close(rows, ann.annotate([r["text"] for r in src]))
    assert sum(r["error"] is not None for r in rows) == sum(r["text"] is None for r in src) > 0

    # schema, lineage metadata and file sizes
    files = sorted(night.glob("*.parquet"))
    schema = pq.read_schema(files[0])
    assert str(schema.field("entities").type) == (
        "list<element: struct<label: string, text: string, start: int32, end: int32, score: float>>"
    )
    assert str(schema.field("label_score").type) == "float"
    meta = json.loads(schema.metadata[b"bert_pipeline"])
    assert meta["config_hash"] == PipelineConfig.from_dict(cfg).config_hash()
    assert meta["models"]["ner"]["revision"].startswith("local:")
    assert all(pq.ParquetFile(f).metadata.num_rows <= 150 for f in files)


def test_completed_night_is_skipped_unless_overwrite(ray_cluster, tiny_models, tmp_path):
    write_corpus(tmp_path / "in", n_files=1, rows_per_file=50)
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    assert _run(cfg)["status"] == "complete"
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "out").iterdir()}
    assert _run(cfg)["status"] == "already_complete"
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "out").iterdir()} == before
    again = _run(cfg, overwrite=True)
    assert again["status"] == "complete" and again["output_rows"] == 50
    assert len(read_output(tmp_path / "out")) == 50


def test_foreign_files_in_output_are_not_touched(ray_cluster, tiny_models, tmp_path):
    write_corpus(tmp_path / "in", n_files=1, rows_per_file=10)
    (tmp_path / "out").mkdir()
    shutil.copy(next((tmp_path / "in").glob("*.parquet")), tmp_path / "out" / "old.parquet")
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    with pytest.raises(OutputError, match="--overwrite"):
        _run(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"input__id_column": "doc_id"}, "'doc_id'"),
        ({"input__text_column": "body"}, "'body'"),
        ({"input__columns": ["nope"]}, "nope"),
    ],
)
def test_wrong_columns_stop_before_any_work(tiny_models, tmp_path, override, message):
    write_corpus(tmp_path / "in", n_files=1, rows_per_file=5)
    cfg = batch_config(
        *tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache", **override
    )
    with pytest.raises(InputError, match=message) as info:
        _run(cfg)
    assert "columns:" in str(info.value) or "not in the input" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_output_columns_must_not_clobber_input_columns(tiny_models, tmp_path):
    import pyarrow as pa

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [1], "text": ["a"], "label": ["gold"]}), tmp_path / "in" / "a.parquet")
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    with pytest.raises(InputError, match="output.prefix"):
        _run(cfg)


def test_corrupt_file_fails_by_name_or_is_skipped_and_reported(ray_cluster, tiny_models, tmp_path):
    ids = write_corpus(tmp_path / "in", n_files=2, rows_per_file=30)
    (tmp_path / "in" / "part-bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    with pytest.raises(InputError, match="part-bad.parquet"):
        _run(cfg)
    cfg["input"]["on_bad_file"] = "skip"
    report = _run(cfg)
    assert [s["path"].rsplit("/", 1)[-1] for s in report["skipped_files"]] == ["part-bad.parquet"]
    assert _ids(read_output(tmp_path / "out")) == sorted(ids)


def test_gpu_actor_on_a_node_without_cuda_falls_back_to_cpu(ray_cluster, tiny_models, tmp_path):
    ids = write_corpus(tmp_path / "in", n_files=1, rows_per_file=40)
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    cfg["ray"]["gpus_per_actor"] = 1  # only the worker node declares a GPU: the actor must land there
    report = _run(cfg)
    assert report["cpu_fallback_actors"] >= 1
    assert _ids(read_output(tmp_path / "out")) == sorted(ids)


def test_killed_inference_actor_loses_no_rows(ray_cluster, tiny_models, tmp_path):
    import os
    import signal

    import ray
    from ray.util.state import list_actors

    ids = write_corpus(tmp_path / "in", n_files=4, rows_per_file=500)
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    cfg["ray"]["docs_per_batch"] = 16
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(_run(cfg)))
    job.start()
    killed = None
    deadline = time.time() + 120
    ours = [("state", "=", "ALIVE"), ("job_id", "=", ray.get_runtime_context().get_job_id())]
    while killed is None and time.time() < deadline and job.is_alive():
        for actor in list_actors(filters=ours):  # not an actor of an earlier test's job
            if "InferActor" in actor.class_name and actor.pid:
                staged = tmp_path / "out" / "_staging" / "data"
                while job.is_alive() and not list(staged.glob("*.parquet")):  # some batches done first
                    time.sleep(0.05)
                try:
                    os.kill(actor.pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended meanwhile: look again
                    break
                killed = actor.pid
                break
        time.sleep(0.5)
    job.join(timeout=600)
    assert killed is not None, "the inference actor was never seen"
    assert result.get("status") == "complete"
    assert _ids(read_output(tmp_path / "out")) == sorted(ids), (
        "no row lost or written twice after the actor died"
    )


@pytest.mark.parametrize(
    "ids, message",
    [
        ([1, 2, 2, 3, 3], r"2 ids occur more than once in column 'id' \(e.g. 2, 3\)"),
        ([1, None, 3], "1 input rows have a null 'id'"),
    ],
)
def test_repeated_or_null_ids_stop_before_any_work(ray_cluster, tiny_models, tmp_path, ids, message):
    import pyarrow as pa

    (tmp_path / "in").mkdir()
    half = len(ids) // 2  # the repeats span two files
    for k, part in enumerate((ids[:half], ids[half:])):
        table = pa.table({"id": pa.array(part, pa.int64()), "text": ["x"] * len(part)})
        pq.write_table(table, tmp_path / "in" / f"part-{k}.parquet")
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    with pytest.raises(InputError, match=message):
        _run(cfg)
    assert not (tmp_path / "out").exists()


def test_id_check_over_many_shares_finds_repeats_across_them(ray_cluster, tmp_path, monkeypatch):
    """Ids hashed into partitions across more tasks than the cluster has CPUs (so tasks wait
    for a slot): a repeat between the first and the last file is found, and nothing else is.
    One file with more ids than a share is split on the cluster as well."""
    import pyarrow as pa
    from pyarrow.fs import LocalFileSystem

    from pipeline import idcheck
    from pipeline.inputs import discover, inspect

    monkeypatch.setattr(idcheck, "CHUNK_IDS", 8)
    fs = LocalFileSystem()
    # one file of ten shares' ids is split on the cluster too (the driver checks one share only)
    for last in (79, 42):
        one = tmp_path / f"one-file-{last}"
        one.mkdir()
        pq.write_table(pa.table({"id": [*range(79), last], "text": ["x"] * 80}), one / "part-0.parquet")
        inputs = inspect(discover(str(one), fs), fs, ["id", "text"], "fail", "id")
        if last == 79:
            checked = idcheck.start_id_check(inputs, fs, "id", 0.5)()
            assert checked.ids == 80 and checked.tasks == 1 + 10, "one split task, ten partitions"
        else:
            with pytest.raises(InputError, match=r"1 ids occur more than once in column 'id' \(e.g. 42\)"):
                idcheck.start_id_check(inputs, fs, "id", 0.5)()
    for repeat in (None, 3):
        root = tmp_path / f"in-{repeat}"
        root.mkdir()
        for k in range(10):
            ids = list(range(k * 8, k * 8 + 8))
            if k == 9 and repeat is not None:
                ids[-1] = repeat
            pq.write_table(pa.table({"id": ids, "text": ["x"] * 8}), root / f"part-{k}.parquet")
        inputs = inspect(discover(str(root), fs), fs, ["id", "text"], "fail", "id")
        if repeat is None:
            checked = idcheck.start_id_check(inputs, fs, "id", 0.5)()
            assert checked.ids == 80 and checked.tasks == 10 + 10, checked
        else:
            with pytest.raises(InputError, match=r"1 ids occur more than once in column 'id' \(e.g. 3\)"):
                idcheck.start_id_check(inputs, fs, "id", 0.5)()


@pytest.mark.parametrize(
    "name, body, kind",
    [
        ("docs.csv", "id,text\n1,hello\n", "a CSV file"),
        ("docs.jsonl", '{"id": 1, "text": "hello"}\n', "a JSON Lines file"),
        ("docs.dat", '{"id": 1, "text": "hello"}', "a JSON file"),
    ],
)
def test_csv_or_json_input_is_refused_as_not_parquet(tiny_models, tmp_path, name, body, kind):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_text(body)
    cfg = batch_config(*tiny_models, str(tmp_path / "in" / name), str(tmp_path / "out"), tmp_path / "cache")
    with pytest.raises(InputError, match=f"{name}: {kind}: only Parquet input is supported"):
        _run(cfg)
    cfg["input"]["path"] = str(tmp_path / "in")  # a folder of them: no Parquet found, and why
    with pytest.raises(InputError, match="only Parquet input is supported"):
        _run(cfg)
    assert not (tmp_path / "out").exists()
