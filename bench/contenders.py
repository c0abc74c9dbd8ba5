"""The contenders, each labeling the same Parquet corpus with the same two models.

- baseline-hf:       transformers pipelines, text-classification then token-classification
                     (aggregation "simple", stride), batch_size 32, as a careful user writes it;
- baseline-raydata:  the documented Ray Data recipe: map_batches over a callable class that
                     wraps the same two pipelines, in an actor pool;
- ours-run:          `pipeline run` (Ray Data job, local Ray);
- ours-annotator:    `Annotator.annotate` in-process.
Each returns rows {id, label, entities: [(label, start, end)]} for the agreement check.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

HF_BATCH = 32


def _hf_pipelines(cls_dir: Path, ner_dir: Path, max_length: int, stride: int, device: str = "cpu"):
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        pipeline,
    )

    tok_c = AutoTokenizer.from_pretrained(str(cls_dir))
    tok_c.model_max_length = max_length
    tok_n = AutoTokenizer.from_pretrained(str(ner_dir))
    tok_n.model_max_length = max_length
    dt = torch.float32
    clf = pipeline(
        "text-classification",
        model=AutoModelForSequenceClassification.from_pretrained(str(cls_dir), dtype=dt),
        tokenizer=tok_c,
        device=device,
    )
    ner = pipeline(
        "token-classification",
        model=AutoModelForTokenClassification.from_pretrained(str(ner_dir), dtype=dt),
        tokenizer=tok_n,
        device=device,
        aggregation_strategy="simple",
        stride=stride,
    )
    return clf, ner


def _hf_rows(ids, texts, clf, ner) -> list[dict[str, Any]]:
    labels = clf(texts, batch_size=HF_BATCH, truncation=True)
    ents = ner(texts, batch_size=HF_BATCH)
    return [
        {
            "id": i,
            "label": c["label"],
            "entities": [(e["entity_group"], int(e["start"]), int(e["end"])) for e in es],
        }
        for i, c, es in zip(ids, labels, ents, strict=True)
    ]


def baseline_hf(
    corpus: Path, cls_dir: Path, ner_dir: Path, max_length: int, stride: int, threads: int
) -> dict:
    import torch

    torch.set_num_threads(threads)
    table = pq.read_table(str(corpus))
    clf, ner = _hf_pipelines(cls_dir, ner_dir, max_length, stride)
    start = time.perf_counter()
    rows = _hf_rows(table.column("id").to_pylist(), table.column("text").to_pylist(), clf, ner)
    return {"wall_s": time.perf_counter() - start, "rows": rows}


class _HFPredictor:
    """The Ray Data recipe: a callable class holding the pipelines, one per actor."""

    def __init__(self, cls_dir: str, ner_dir: str, max_length: int, stride: int, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.clf, self.ner = _hf_pipelines(Path(cls_dir), Path(ner_dir), max_length, stride)

    def __call__(self, batch: dict) -> dict:
        import json

        rows = _hf_rows(list(batch["id"]), list(batch["text"]), self.clf, self.ner)
        return {
            "id": batch["id"],
            "label": [r["label"] for r in rows],
            "entities": [json.dumps(r["entities"]) for r in rows],
        }


def baseline_raydata(
    corpus: Path, cls_dir: Path, ner_dir: Path, max_length: int, stride: int, threads: int
) -> dict:
    import json

    import ray

    from pipeline.cluster import ensure_ray

    start = time.perf_counter()
    ensure_ray(None)  # RAY_ADDRESS if set, else a local instance: the same rule as ours-run
    ds = ray.data.read_parquet(str(corpus)).map_batches(
        _HFPredictor,
        fn_constructor_kwargs={
            "cls_dir": str(cls_dir),
            "ner_dir": str(ner_dir),
            "max_length": max_length,
            "stride": stride,
            "threads": threads,
        },
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_size=64,
    )
    out = ds.take_all()
    wall = time.perf_counter() - start
    ray.shutdown()
    rows = [
        {"id": r["id"], "label": r["label"], "entities": [tuple(e) for e in json.loads(r["entities"])]}
        for r in out
    ]
    return {"wall_s": wall, "rows": rows}


def _config(
    cls_dir: Path,
    ner_dir: Path,
    max_length: int,
    stride: int,
    dtype: str,
    threads: int,
    device: str,
    batch_size: int = 32,
    cache_dir: Path | None = None,
):
    """`dtype` names a variant: fp32, bf16, auto, or ort-fp32 / ort-int8 for the onnxruntime engine."""
    engine, _, name = dtype.rpartition("-")
    runtime = {"batch_size": batch_size, "dtype": name, "device": device, "num_threads": threads}
    runtime["engine"] = {"ort": "onnxruntime", "": "auto"}[engine]
    return {
        "models": {
            "classifier": {"source": str(cls_dir), "max_length": max_length},
            "ner": {
                "source": str(ner_dir),
                "max_length": max_length,
                "stride": stride,
                "aggregation": "simple",
            },
        },
        "runtime": runtime,
    } | ({"cache_dir": str(cache_dir)} if cache_dir else {})


def _our_rows(ids, rows) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "label": r["label"],
            "entities": [(e["label"], e["start"], e["end"]) for e in (r["entities"] or [])],
        }
        for i, r in zip(ids, rows, strict=True)
    ]


def ours_annotator(
    corpus,
    cls_dir,
    ner_dir,
    max_length,
    stride,
    threads,
    dtype="auto",
    device="cpu",
    batch_size=32,
    max_batch_tokens=None,
    cache_dir=None,
) -> dict:
    from pipeline import Annotator, PipelineConfig

    table = pq.read_table(str(corpus))
    cfg = _config(cls_dir, ner_dir, max_length, stride, dtype, threads, device, batch_size, cache_dir)
    if max_batch_tokens:
        cfg["runtime"]["max_batch_tokens"] = max_batch_tokens
    ann = Annotator(PipelineConfig.from_dict(cfg))
    texts = table.column("text").to_pylist()
    ann.annotate(texts[:8])  # warm-up, not counted
    before = ann.stats().as_dict()
    start = time.perf_counter()
    rows = ann.annotate(texts)
    wall = time.perf_counter() - start
    after = ann.stats().as_dict()
    return {
        "wall_s": wall,
        "rows": _our_rows(table.column("id").to_pylist(), rows),
        "real_tokens": after["real_tokens"] - before["real_tokens"],
        "padded_tokens": after["padded_tokens"] - before["padded_tokens"],
        "dtype": "/".join(sorted({lm.runs_as or "" for lm in ann.models.values()})),
    }


def ours_run(
    corpus, cls_dir, ner_dir, max_length, stride, threads, out: Path, dtype="auto", cache_dir=None
) -> dict:
    from pipeline import PipelineConfig, batch

    cfg = _config(cls_dir, ner_dir, max_length, stride, dtype, threads, "cpu", cache_dir=cache_dir)
    cfg["ray"] = {"infer_actors": 1, "cpus_per_actor": 1, "cpus_per_task": 0.5, "docs_per_batch": 256}
    cfg["input"] = {"path": str(corpus)}
    cfg["output"] = {"path": str(out), "min_rows_per_file": 100_000, "max_rows_per_file": 1_000_000}
    start = time.perf_counter()  # Ray start-up included: that is what a user waits for
    report = batch.run(PipelineConfig.from_dict(cfg), overwrite=True, echo=lambda s: None)
    wall = time.perf_counter() - start
    import ray

    ray.shutdown()
    table = pq.read_table(str(out))
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    return {
        "wall_s": wall,
        "rows": _our_rows([r["id"] for r in rows], rows),
        "real_tokens": report["tokens"],
        "padded_tokens": report["padded_tokens"],
        "startup_s": report["startup_s"],  # Ray start, workers, model load: fixed, not per document
        # what the inference actors ran (dtype auto follows the tuned verdict)
        "dtype": "/".join(sorted({d for ds in report["model_dtypes"].values() for d in ds})),
    }
