"""Embedding benchmark: our embedding kind against `SentenceTransformer.encode`, and what adding
embeddings to a classification + NER pass costs; side by side, one run, pinned threads.

    python -m bench.embeddings                 # 400 documents of the throughput corpus (~5 min here)
    python -m bench.embeddings --quick         # a smoke size

Same corpus as `bench.throughput` (seeded, log-normal lengths: median ~80 words, a tail past
2,000), the same pretrained all-MiniLM-L6-v2, the same number of torch threads, fp32 for both
(what sentence-transformers runs on a CPU); each contender warms up on a few documents first.
The MiniLM-sized classifier and NER are the demo models when built, else random-weight ones of
the same shape (speed does not depend on the weights). A benchmark, not a test: it prints
figures and ratios and never fails on timing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import generate
from bench.throughput import model_pair
from pipeline.models import cpu_name


def _timed(fn: Any, texts: list[str]) -> tuple[float, Any]:
    fn(texts[:8])  # warm-up: weights paged in, first kernels built
    start = time.perf_counter()
    out = fn(texts)
    return time.perf_counter() - start, out


def run(docs: int, threads: int, dtype: str, work: Path) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    from pipeline import Annotator, PipelineConfig
    from pipeline.demo.random_models import minilm_dir

    torch.set_num_threads(threads)
    texts = generate(docs, seed=7)
    minilm = str(minilm_dir())
    cls_dir, ner_dir = model_pair("minilm", work)
    runtime = {"dtype": dtype, "num_threads": threads, "batch_size": 32}

    def annotator(models: dict[str, Any]) -> Annotator:
        return Annotator(
            PipelineConfig.from_dict({"models": models, "runtime": runtime, "cache_dir": str(work / "cache")})
        )

    embedding = {"embedding": {"source": minilm}}
    labels = {
        "classifier": {"source": str(cls_dir), "max_length": 512},
        "ner": {"source": str(ner_dir), "max_length": 512, "stride": 128, "aggregation": "first"},
    }
    st = SentenceTransformer(minilm, device="cpu")
    results: dict[str, dict[str, Any]] = {}
    st_s, ref = _timed(
        lambda t: st.encode(t, batch_size=32, convert_to_numpy=True, show_progress_bar=False), texts
    )
    results["sentence-transformers"] = {"seconds": st_s}
    ours = annotator(embedding)
    ran = ours.models["embedding"].dtype
    if ran == "bf16":  # the reference in our dtype too: what bf16 alone buys, apart from the rest
        st16 = SentenceTransformer(minilm, device="cpu", model_kwargs={"dtype": torch.bfloat16})
        results["sentence-transformers-bf16"] = {
            "seconds": _timed(lambda t: st16.encode(t, batch_size=32, show_progress_bar=False), texts)[0]
        }
    ours_s, rows = _timed(ours.annotate, texts)
    got = np.array([r["embedding"] for r in rows], np.float32)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    results["ours-embedding"] = {
        "seconds": ours_s,
        "cosine_min_vs_st": round(float(cos.min()), 6),
        "dtype": ran,
    }
    two = annotator(labels)
    results["ours-classifier+ner"] = {"seconds": _timed(two.annotate, texts)[0]}
    three = annotator({**labels, **embedding})
    assert len(three.encoder.groups) == 1, "the three models share one tokenization"
    results["ours-classifier+ner+embedding"] = {"seconds": _timed(three.annotate, texts)[0]}
    for row in results.values():
        row["docs_per_s"] = round(docs / row["seconds"], 2)
        row["seconds"] = round(row["seconds"], 2)
    ratios = {
        "embedding_vs_sentence_transformers": round(st_s / ours_s, 2),
        **(
            {
                "embedding_vs_sentence_transformers_bf16": round(
                    results["sentence-transformers-bf16"]["seconds"] / ours_s, 2
                )
            }
            if "sentence-transformers-bf16" in results
            else {}
        ),
        "three_models_time_vs_two": round(
            results["ours-classifier+ner+embedding"]["seconds"] / results["ours-classifier+ner"]["seconds"], 2
        ),
    }
    return {
        "docs": docs,
        "threads": threads,
        "dtype": dtype,
        "cpu": cpu_name(),
        "results": results,
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--docs", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="fp32", help="ours: fp32 (as sentence-transformers on CPU), or auto")
    p.add_argument("--quick", action="store_true", help="a smoke size")
    p.add_argument("--work", default="out/bench/work")
    p.add_argument("--out", default="out/bench/embeddings.json")
    a = p.parse_args(argv)
    report = run(24 if a.quick else a.docs, a.threads, a.dtype, Path(a.work))
    for name, row in report["results"].items():
        extra = (
            f"  (cosine to sentence-transformers >= {row['cosine_min_vs_st']})"
            if "cosine_min_vs_st" in row
            else ""
        )
        print(f"{name:32s} {row['docs_per_s']:8.2f} docs/s  {row['seconds']:7.2f} s{extra}")
    r = report["ratios"]
    print(
        f"embedding alone ({report['results']['ours-embedding']['dtype']}): x{r['embedding_vs_sentence_transformers']} "
        "sentence-transformers' docs/s in fp32 (target >= 2)"
        + (
            f", x{r['embedding_vs_sentence_transformers_bf16']} in bf16"
            if "embedding_vs_sentence_transformers_bf16" in r
            else ""
        )
        + "; "
        f"classifier+ner+embedding takes x{r['three_models_time_vs_two']} the time of classifier+ner "
        f"(target <= 1.4); {report['docs']} docs, {report['threads']} threads, {report['dtype']}, on {report['cpu']}"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
