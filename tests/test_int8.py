"""The onnxruntime engine: fp32 and int8 graphs built once per revision, int8 agreeing with fp32,
and `dtype: auto` choosing an engine and dtype only where this CPU's measured verdict says so.

The tiny random models have near-flat classifier outputs (top-label margins of about 0.001),
so their labels flip under any quantization; on them the gate is looser than the product's
(entity F1 >= 0.95, classifier top score within 0.03 of fp32). The product's gate (labels
>= 99%, F1 >= 0.98) is measured on real models by `pipeline models tune`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import batch_config, read_output, tiny_config, write_corpus
from test_dtype import generated_texts

from pipeline import Annotator, PipelineConfig, batch, cli, models, ort_engine
from pipeline.demo.random_models import minilm_dir
from pipeline.kinds import agreement
from pipeline.models import ModelLoadError, cpu_name, load_models


def _cfg(tiny_models, cache, dtype="int8", **kw) -> PipelineConfig:
    cfg = tiny_config(*tiny_models, runtime__dtype=dtype, **kw)
    cfg["cache_dir"] = str(cache)
    return PipelineConfig.from_dict(cfg)


def _entries(cache) -> list[str]:
    return sorted(p.name for p in (cache / "onnx").iterdir() if p.is_dir())


@pytest.mark.slow  # builds ONNX models
def test_int8_agrees_with_fp32_and_keeps_row_errors(tiny_models, corpus, tmp_path):
    texts = generated_texts(200) + corpus + [None]
    ref = Annotator(_cfg(tiny_models, tmp_path, "fp32")).annotate(texts)
    ann = Annotator(_cfg(tiny_models, tmp_path, "int8"))
    assert {lm.dtype for lm in ann.models.values()} == {"int8"}
    rows = ann.annotate(texts)

    scores = agreement(rows, ref)
    deltas = [
        abs(a["label_score"] - b["label_score"])
        for a, b in zip(rows[:-1], ref[:-1], strict=True)
        if b["label"]
    ]
    print(f"\nint8 vs fp32 on {len(texts)} tiny-model rows: {scores}, top-score delta {max(deltas):.4f}")
    assert scores["entity_f1"] >= 0.95
    assert max(deltas) <= 0.03
    for a, b in zip(rows, texts, strict=True):  # offsets still index the text
        for e in a["entities"] or []:
            assert b[e["start"] : e["end"]] == e["text"]
    assert [r["error"] for r in rows] == [r["error"] for r in ref], "the same row errors in every dtype"
    assert rows[-1]["error"] is not None and rows[-1]["label"] is None


@pytest.mark.slow  # builds ONNX models
def test_int8_build_is_cached_per_revision_and_library_versions(tiny_models, tmp_path, monkeypatch):
    Annotator(_cfg(tiny_models, tmp_path))
    first = _entries(tmp_path)
    assert [e.split("-")[0] for e in first] == ["classifier", "ner"]
    built = {e: (tmp_path / "onnx" / e / "int8.onnx").stat().st_mtime_ns for e in first}
    assert all((tmp_path / "onnx" / e / "fp32.onnx").exists() for e in first), (
        "int8 is quantized from the fused fp32"
    )

    def no_fp32(*args):
        raise AssertionError("a cached build must not read the fp32 weights again")

    with monkeypatch.context() as m:
        m.setattr(models, "_load_weights", no_fp32)
        again = Annotator(_cfg(tiny_models, tmp_path))
    assert {lm.dtype for lm in again.models.values()} == {"int8"}
    assert {e: (tmp_path / "onnx" / e / "int8.onnx").stat().st_mtime_ns for e in first} == built
    with monkeypatch.context() as m:  # the fp32 graph was built on the way: no export either
        m.setattr(models, "_load_weights", no_fp32)
        fp32 = Annotator(_cfg(tiny_models, tmp_path, "fp32", runtime__engine="onnxruntime"))
    assert {lm.runs_as for lm in fp32.models.values()} == {"ort-fp32"}

    # new weights under the same directory are a new revision: a new build, the old one untouched
    changed = tmp_path / "models"
    shutil.copytree(tiny_models[0].parent, changed)
    from safetensors.torch import load_file, save_file

    weights = changed / "ner" / "model.safetensors"
    tensors = load_file(weights)
    tensors["classifier.bias"] = tensors["classifier.bias"] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    Annotator(_cfg((changed / "classifier", changed / "ner"), tmp_path))
    after = _entries(tmp_path)
    assert len(after) == 3 and set(first) < set(after)
    meta = json.loads((tmp_path / "onnx" / (set(after) - set(first)).pop() / "build.json").read_text())
    assert meta["task"] == "ner" and meta["built"].startswith(ort_engine.RECIPE)
    assert meta["fused"]["Attention"] == 2 and meta["fused"]["SkipLayerNormalization"] == 4, meta["fused"]


@pytest.mark.slow  # builds ONNX models
def test_auto_runs_what_this_cpus_verdict_chose(tiny_models, tmp_path):
    def auto(engine: str = "auto") -> dict:
        cfg = _cfg(tiny_models, tmp_path, "auto", runtime__engine=engine)
        return {t: lm.runs_as for t, lm in load_models(cfg).items()}

    floats = auto()
    assert set(floats.values()) <= {"fp32", "bf16"}, "no verdict: auto runs torch, never guesses"
    untuned = {t: lm.untuned for t, lm in load_models(_cfg(tiny_models, tmp_path, "auto")).items()}
    assert untuned == {"classifier": True, "ner": True}, "ONNX Runtime is there to try"
    assert set(auto("onnxruntime").values()) == {"ort-fp32"}, "no verdict on that engine: its fp32"
    revisions = {
        t: lm.revision for t, lm in load_models(_cfg(tiny_models, tmp_path, "fp32"), weights=False).items()
    }
    ort_int8 = {"engine": "onnxruntime", "dtype": "int8"}
    torch_fp32 = {"engine": "torch", "dtype": "fp32"}
    best = {"torch": torch_fp32, "onnxruntime": ort_int8}
    for verdict, expected in (
        ({"choice": ort_int8, "best_by_engine": best, "cpu": cpu_name()}, "ort-int8"),
        ({"choice": ort_int8, "best_by_engine": best, "cpu": "another CPU"}, floats["ner"]),
        ({"choice": torch_fp32, "best_by_engine": best, "cpu": cpu_name()}, "fp32"),
    ):
        ort_engine.write_verdict("ner", revisions["ner"], tmp_path, verdict)
        assert auto() == {"classifier": floats["classifier"], "ner": expected}, verdict
        if verdict["cpu"] != "another CPU":
            ort_engine._verdict_file("ner", revisions["ner"], tmp_path, cpu_name()).unlink()
    # a config that fixes the engine takes that engine's best
    ort_engine.write_verdict(
        "ner", revisions["ner"], tmp_path, {"choice": torch_fp32, "best_by_engine": best, "cpu": cpu_name()}
    )
    assert auto("onnxruntime")["ner"] == "ort-int8"
    assert auto("torch")["ner"] == "fp32"
    untuned = {t: lm.untuned for t, lm in load_models(_cfg(tiny_models, tmp_path, "auto")).items()}
    assert untuned == {"classifier": True, "ner": False}, "the model with a verdict is tuned"
    # an explicit dtype wins over any verdict, and is never called untuned
    explicit = load_models(_cfg(tiny_models, tmp_path, "fp32")).values()
    assert {lm.runs_as for lm in explicit} == {"fp32"} and not any(lm.untuned for lm in explicit)


def test_int8_on_a_gpu_is_refused(tiny_models, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(models, "choose_device", lambda runtime: torch.device("meta"))
    with pytest.raises(ModelLoadError, match="int8 run on CPU only"):
        load_models(_cfg(tiny_models, tmp_path))


def test_int8_without_onnxruntime_is_one_clear_error(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(ort_engine, "available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"pip install -e '\.\[int8\]'"):
        load_models(_cfg(tiny_models, tmp_path))
    with pytest.raises(ModelLoadError, match=r"pip install -e '\.\[int8\]'"):
        load_models(_cfg(tiny_models, tmp_path, "fp32", runtime__engine="onnxruntime"))
    plain = load_models(_cfg(tiny_models, tmp_path, "auto")).values()
    assert {lm.engine for lm in plain} == {"torch"}
    # without ONNX Runtime, tuning has something to try only where bf16 is native (its gate)
    assert {lm.untuned for lm in plain} == {models.cpu_has_fast_bf16()}


@pytest.mark.slow  # builds ONNX models
def test_tune_command_measures_every_variant_and_auto_follows_it(tiny_models, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": range(60), "text": generated_texts(60)}), tmp_path / "in.parquet")
    cfg = tiny_config(*tiny_models)
    cfg["models"]["embedding"] = {"source": str(minilm_dir())}  # a kind with its own gate: cosine
    cfg |= {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "cache_dir": "cache"}
    (tmp_path / "night.yaml").write_text(json.dumps(cfg))
    assert cli.main(["models", "tune", str(tmp_path / "night.yaml"), "--texts", "40", "--repeats", "1"]) == 0
    out = capsys.readouterr()
    verdicts = json.loads(out.out)
    assert set(verdicts) == {"classifier", "ner", "embedding"}
    assert verdicts["embedding"]["gate"] == {"cosine_min": 0.99}
    assert verdicts["embedding"]["variants"]["torch fp32"]["cosine_min"] == 1.0
    assert verdicts["embedding"]["variants"]["onnxruntime fp32"]["cosine_min"] >= 0.99999
    assert 0.9 < verdicts["embedding"]["variants"]["onnxruntime int8"]["cosine_min"] < 1.0
    expected = {"torch fp32", "onnxruntime fp32", "onnxruntime int8"}
    expected |= {"torch bf16"} if models.cpu_has_fast_bf16() else set()
    for task, v in verdicts.items():
        assert v["texts"] == 40 and set(v["variants"]) == expected
        assert ("torch bf16" in v["skipped"]) == (not models.cpu_has_fast_bf16())
        chosen = v["variants"][f"{v['choice']['engine']} {v['choice']['dtype']}"]
        assert chosen["meets_gate"] and chosen["faster"]
        fastest = max(
            (x for x in v["variants"].values() if x["meets_gate"] and x["faster"]),
            key=lambda x: x["speed_vs_torch_fp32"],
        )
        assert chosen == fastest, "the fastest variant that holds the gate and beats torch fp32"
        written = Path(v["path"])
        assert (tmp_path / "cache" / "onnx") in written.parents, "relative cache_dir: beside the config"
        assert json.loads(written.read_text()) == {k: x for k, x in v.items() if k != "path"}
        assert f"{task} (" in out.err and "dtype auto runs" in out.err and "onnxruntime int8" in out.err
    assert verdicts["ner"]["variants"]["onnxruntime fp32"]["entity_f1"] == 1.0
    # and the verdicts drive dtype auto on this machine
    auto = tiny_config(*tiny_models, runtime__dtype="auto") | {"cache_dir": str(tmp_path / "cache")}
    auto["models"]["embedding"] = cfg["models"]["embedding"]
    ran = {t: (lm.engine, lm.dtype) for t, lm in load_models(PipelineConfig.from_dict(auto)).items()}
    for task, v in verdicts.items():
        assert ran[task] == (v["choice"]["engine"], v["choice"]["dtype"]), (task, ran, v)


def test_int8_batch_job_runs_int8_on_the_actors_and_agrees_with_in_process(
    ray_cluster, tiny_models, tmp_path
):
    write_corpus(tmp_path / "in", n_files=2, rows_per_file=100)
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    cfg["runtime"]["dtype"] = "int8"
    report = batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
    assert report["status"] == "complete" and report["output_rows"] == 200
    assert report["model_dtypes"] == {"classifier": ["ort-int8"], "ner": ["ort-int8"]}
    rows = read_output(tmp_path / "out")
    assert len(_entries(tmp_path / "cache")) == 2, "one build per model, shared by the node's actors"
    in_process = Annotator(PipelineConfig.from_dict(cfg)).annotate([r["text"] for r in rows])
    # Dynamic quantization scales activations per batch, so a row's batch mates move its scores
    # (and, on these near-tied tiny models, a few token labels): close, not bit-equal.
    scores = agreement(rows, in_process)
    assert scores["label_agreement"] >= 0.95 and scores["entity_f1"] >= 0.95, scores
    assert [r["error"] for r in rows] == [r["error"] for r in in_process]


def test_a_night_whose_nodes_chose_different_dtypes_says_so():
    counts = {"actor_dtype:ner:int8": 1, "actor_dtype:ner:fp32": 1, "actor_dtype:classifier:fp32": 2}
    report = {"documents": 10, "errors": 0, "wall_s": 1.0, "docs_per_s": 10.0, "windows": 10, "tokens": 99}
    report |= {"padded_tokens": 100, "padding_efficiency": 0.99, "output": "out", "input_rows": 10}
    report |= {"skipped_files": [], "skipped_rows": 0}
    report["model_dtypes"] = batch.model_dtypes(counts)
    assert report["model_dtypes"] == {"classifier": ["fp32"], "ner": ["fp32", "int8"]}
    text = batch.summary(report)
    assert "ner fp32/int8" in text and "classifier" not in text.split("warning")[1]
    report["model_dtypes"] = batch.model_dtypes({"actor_dtype:ner:int8": 3})
    assert "warning" not in batch.summary(report)
    assert "untuned" not in batch.summary(report) and "models tune" not in batch.summary(report)
    report["untuned_models"] = ["ner"]
    assert "untuned: ner ran dtype auto's unmeasured default" in batch.summary(report)
    assert "`pipeline models tune CONFIG`" in batch.summary(report)


def test_tune_choice_beats_torch_fp32_and_each_engine_its_own_fp32():
    from pipeline.tune import choose

    def row(engine, dtype, speed, ok=True):
        return {"engine": engine, "dtype": dtype, "speed_vs_torch_fp32": speed, "meets_gate": ok}

    table = {
        "torch fp32": row("torch", "fp32", 1.0),
        "torch bf16": row("torch", "bf16", 2.4, ok=False),
        "onnxruntime fp32": row("onnxruntime", "fp32", 0.8),
        "onnxruntime int8": row("onnxruntime", "int8", 1.02),
    }
    for r in table.values():
        r["faster"] = r["speed_vs_torch_fp32"] >= 1.05 or r is table["torch fp32"]
    choice, per_engine = choose(table)
    assert choice == {"engine": "torch", "dtype": "fp32"}, "nothing that holds the gate beats torch fp32"
    assert per_engine["onnxruntime"] == {"engine": "onnxruntime", "dtype": "int8"}, "x1.02 beats ORT's x0.8"
    assert per_engine["torch"] == {"engine": "torch", "dtype": "fp32"}, "bf16 missed the gate"
    table["onnxruntime fp32"]["meets_gate"] = False
    table["onnxruntime int8"]["speed_vs_torch_fp32"] = 0.5
    assert choose(table)[1]["onnxruntime"]["dtype"] == "int8", "the engine's variant that holds the gate"
