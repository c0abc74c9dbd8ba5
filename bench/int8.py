"""int8 candidates against fp32 on the demo models, side by side in one run: speed and agreement.

    python -m bench.int8 [torch_dynamic ort ort_keep_ffn_out ort_fp32 torchao bf16]   (needs models/demo)

Each candidate replaces the models inside an `Annotator` (the product's own encode and
decode around it) and is timed on the same real sentences as fp32 (best of two passes).
Agreement is against fp32: the share of equal labels and exact-span entity F1. The issue's
gate for `runtime.dtype: int8` is >= 99% labels and F1 >= 0.98. `ort_keep_ffn_out` is the
recipe the product ships (pipeline/ort_engine.py). `onnxruntime` and `onnx` come with the `int8`
extra; `torchao` is not a project dependency: install it to measure that candidate.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def sentences() -> list[str]:
    import pyarrow.parquet as pq

    from pipeline.demo.corpus import NER_TEMPLATES, TOPIC_TEMPLATES, Fillers, ner_examples, topic_examples

    texts = [t for t in pq.read_table("examples/sample.parquet").column("text").to_pylist() if t]
    fillers = Fillers(7)
    texts += [e.text for e in ner_examples(NER_TEMPLATES, 300, fillers)]
    return texts + [d.text for d, _ in topic_examples(TOPIC_TEMPLATES, 300, fillers)]


def timed(ann, texts: list[str], reps: int = 2) -> tuple[list[dict], float]:
    ann.annotate(texts[:16])  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        rows = ann.annotate(texts)
        best = min(best, time.perf_counter() - start)
    return rows, best


def onnx_model(model, path: Path, threads: int, quantize: bool, keep_fp32: tuple[str, ...]):
    from pipeline.ort_engine import OrtModel, export_fp32, quantize_int8

    export_fp32(model, path)
    if quantize:
        out = path.with_name(path.stem + "-int8.onnx")
        quantize_int8(path, out, keep_fp32)
        path = out
    return OrtModel(path, "int8" if quantize else "fp32", threads)


def swap(ann, name: str, threads: int, work: Path) -> None:
    import torch

    for task, runner in ann.engine.runners.items():
        model = runner.model
        if name == "bf16":
            runner.model = model.to(torch.bfloat16)
        elif name == "torch_dynamic":
            runner.model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif name == "torchao":
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            quantize_(model, Int8DynamicActivationInt8WeightConfig())
        elif name in ("ort", "ort_fp32", "ort_keep_ffn_out"):
            keep = ("/output/dense", "classifier") if name == "ort_keep_ffn_out" else ()
            runner.model = onnx_model(model, work / f"{task}.onnx", threads, name != "ort_fp32", keep)
        else:
            raise SystemExit(f"unknown candidate {name}")


def main(argv: list[str] | None = None) -> None:
    import torch

    from pipeline import Annotator, PipelineConfig
    from pipeline.kinds import agreement

    names = (argv if argv is not None else sys.argv[1:]) or ["torch_dynamic", "ort", "ort_keep_ffn_out"]
    threads = 2
    torch.set_num_threads(threads)
    cfg = PipelineConfig.from_dict(
        {
            "models": {
                "classifier": {"source": "models/demo/classifier"},
                "ner": {"source": "models/demo/ner", "aggregation": "first"},
            },
            "runtime": {"dtype": "fp32", "num_threads": threads, "batch_size": 32},
        }
    )
    work = Path("out/bench/int8")
    work.mkdir(parents=True, exist_ok=True)
    texts = sentences()
    ref, fp32_s = timed(Annotator(cfg), texts)
    results: dict[str, Any] = {"texts": len(texts), "fp32_s": round(fp32_s, 2), "candidates": {}}
    for name in names:
        ann = Annotator(cfg)
        start = time.perf_counter()
        swap(ann, name, threads, work)
        prepare_s = time.perf_counter() - start
        rows, seconds = timed(ann, texts)
        scores = agreement(rows, ref)
        results["candidates"][name] = {
            "s": round(seconds, 2),
            "speed_vs_fp32": round(fp32_s / seconds, 2),
            "label_agreement": scores["label_agreement"],
            "entity_f1": scores["entity_f1"],
            "prepare_s": round(prepare_s, 1),
        }
        print(name, results["candidates"][name], flush=True)
    (work / "int8.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
