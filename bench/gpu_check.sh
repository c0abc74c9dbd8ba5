#!/usr/bin/env bash
# GPU check: the throughput bench on CUDA with fp16; tokens/s and model FLOP utilization
# against this GPU's measured fp16 matmul peak, at several token budgets (max_batch_tokens). Finishes in under 5 minutes on one GPU.
#   bash bench/gpu_check.sh [DOCS]        (run from the repository root, package installed)
set -euo pipefail
DOCS="${1:-4000}"
python - "$DOCS" <<'PY'
import sys, time, json
from pathlib import Path
import torch
assert torch.cuda.is_available(), "no CUDA device"
from bench.corpus import write_parquet
from bench.measure import matmul_peak
from bench.contenders import ours_annotator
from bench.throughput import workload
from pipeline.demo.random_models import SIZES, build_random_pair

docs = int(sys.argv[1])
print(torch.cuda.get_device_name(0), flush=True)
peak = matmul_peak("fp16", device="cuda", size=8192, seconds=3)
print(f"fp16 matmul peak: {peak / 1000:.0f} TFLOP/s", flush=True)
out = Path("out/gpu_check")
results = {"gpu": torch.cuda.get_device_name(0), "fp16_peak_tflops": round(peak / 1000, 1), "runs": []}
for size in ("minilm", "base"):
    corpus = write_parquet(out / f"corpus-{size}", docs, seed=0)
    cls_dir, ner_dir = build_random_pair(out / "models" / size, **SIZES[size])
    work = workload(corpus, cls_dir, ner_dir, 512, 128)
    # batch_size 64 at the default budget, then batch_size 512 under a range of token budgets:
    # which max_batch_tokens saturates this GPU (pick runtime.max_batch_tokens from these rows).
    for batch, budget in ((64, 65536), (512, 8192), (512, 16384), (512, 32768), (512, 65536), (512, 131072)):
        r = ours_annotator(corpus, cls_dir, ner_dir, 512, 128, 8, dtype="auto", device="cuda",
                           batch_size=batch, max_batch_tokens=budget)
        tflops = work["flops"] / r["wall_s"] / 1e12
        row = {"model": size, "batch_size": batch, "max_batch_tokens": budget,
               "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "docs": work["docs"], "docs_per_s": round(work["docs"] / r["wall_s"], 1),
               "tokens_per_s": round(work["tokens"] / r["wall_s"]), "padding_efficiency": round(r["real_tokens"] / r["padded_tokens"], 4),
               "model_tflops": round(tflops, 1), "mfu": round(tflops * 1000 / peak, 4), "dtype": r["dtype"]}
        torch.cuda.reset_peak_memory_stats()
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
out.mkdir(parents=True, exist_ok=True)
(out / "gpu_check.json").write_text(json.dumps(results, indent=2))
print(f"wrote {out / 'gpu_check.json'}")
PY
