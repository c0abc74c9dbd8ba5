"""Does int8 earn its place for these models on this machine? `pipeline models quantize`
measures it on the config's own input and records the verdict that `runtime.dtype: auto`
follows, so auto never trades accuracy for speed on a guess.

The gate (from the issue that asked for int8): against fp32 on the same texts, label
agreement >= 99% for a classifier and exact-span entity F1 >= 0.98 for NER; and int8 must
be faster than the float dtype auto would otherwise pick here (bf16 on CPUs with native
bf16, else fp32). bf16's agreement is measured beside it, for the same comparison.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.annotator import Annotator
from pipeline.config import PipelineConfig
from pipeline.inputs import InputError, discover
from pipeline.kinds import slots
from pipeline.models import cpu_has_fast_bf16, cpu_name, default_cache_dir
from pipeline.quantize import write_verdict
from pipeline.storage import arrow_filesystem

MIN_SPEEDUP = 1.05  # below this, "faster" is within this machine's run-to-run noise


def sample_texts(cfg: PipelineConfig, n: int) -> list[str]:
    """The first `n` non-empty texts of the configured input, in file order."""
    import pyarrow.parquet as pq

    fs, path = arrow_filesystem(cfg.batch_input.path, cfg.s3)
    texts: list[str] = []
    for file in discover(path, fs):
        column = pq.read_table(file, columns=[cfg.batch_input.text_column], filesystem=fs).column(0)
        texts += [t for t in column.to_pylist() if isinstance(t, str) and t.strip()][: n - len(texts)]
        if len(texts) >= n:
            break
    if not texts:
        raise InputError(f"no texts to measure in {cfg.batch_input.path}")
    return texts


def _with_dtype(cfg: PipelineConfig, dtype: str) -> PipelineConfig:
    """On the CPU whatever the config says: a verdict is about CPU int8 against CPU floats."""
    runtime = cfg.runtime.model_copy(update={"dtype": dtype, "device": "cpu"})
    return cfg.model_copy(update={"runtime": runtime})


def _timed(cfg: PipelineConfig, texts: list[str], repeats: int) -> tuple[list[dict], dict, dict]:
    """Annotate `texts` `repeats` times: (rows, the fastest pass's forward seconds per model,
    {model: (source, revision)}). The models are let go on return: one dtype in memory at a time."""
    ann = Annotator(cfg)
    ann.annotate(texts[:16])  # warm-up: first-call allocations, ORT's session set-up
    best: dict[str, float] = {}
    rows: list[dict] = []
    for _ in range(repeats):
        before = {task: r.stats.forward_s for task, r in ann.engine.runners.items()}
        rows = ann.annotate(texts)
        for task, runner in ann.engine.runners.items():
            spent = runner.stats.forward_s - before[task]
            best[task] = min(best.get(task, float("inf")), spent)
    return rows, best, {task: (lm.spec.source, lm.revision) for task, lm in ann.models.items()}


def measure(cfg: PipelineConfig, texts: list[str], repeats: int = 2) -> dict[str, dict[str, Any]]:
    """fp32, bf16 and int8 on the same texts; one verdict per model, written beside its int8 build."""
    baseline = "bf16" if cpu_has_fast_bf16() else "fp32"
    runs = {dtype: _timed(_with_dtype(cfg, dtype), texts, repeats) for dtype in ("fp32", "bf16", "int8")}
    ref_rows = runs["fp32"][0]
    verdicts = {}
    by_name = {slot.name: slot for slot in slots(cfg.models)}
    for task, (source, revision) in runs["int8"][2].items():
        slot = by_name[task]
        metric, floor = slot.kind.gate  # each kind's own agreement measure and floor
        per_dtype = {}
        for dtype, (rows, seconds, _) in runs.items():
            scores = slot.kind.agreement(rows, ref_rows, slot.columns)
            per_dtype[dtype] = {"forward_s": round(seconds[task], 3), metric: scores[metric]}
            per_dtype[dtype]["speed_vs_fp32"] = round(runs["fp32"][1][task] / seconds[task], 2)
        speedup = runs[baseline][1][task] / runs["int8"][1][task]
        meets = per_dtype["int8"][metric] >= floor
        verdict = {
            "task": task,
            "source": source,
            "revision": revision,
            "texts": len(texts),
            "gate": {metric: floor},
            "dtypes": per_dtype,
            "baseline": baseline,
            "int8_speedup_vs_baseline": round(speedup, 2),
            "meets_gate": meets,
            "faster": speedup >= MIN_SPEEDUP,
            "use_int8": meets and speedup >= MIN_SPEEDUP,
            "cpu": cpu_name(),
            "threads": cfg.runtime.num_threads,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        verdict["path"] = str(
            write_verdict(slot.kind.default_name, revision, default_cache_dir(cfg), verdict)
        )
        verdicts[task] = verdict
    return verdicts


def summary(verdicts: dict[str, dict[str, Any]]) -> str:
    lines = []
    for task, v in verdicts.items():
        metric, floor = next(iter(v["gate"].items()))
        lines.append(f"{task} ({v['source']}, {v['texts']} texts, gate {metric} >= {floor}):")
        for dtype, d in v["dtypes"].items():
            lines.append(
                f"  {dtype:5} forward {d['forward_s']:8.2f} s  x{d['speed_vs_fp32']:.2f} vs fp32  {metric} {d[metric]:.4f}"
            )
        choice = "int8" if v["use_int8"] else v["baseline"]
        why = (
            "meets the gate and is faster"
            if v["use_int8"]
            else ("misses the quality gate" if not v["meets_gate"] else "is not faster here")
        )
        lines.append(
            f"  -> dtype auto runs {choice} on this machine: int8 {why} "
            f"(x{v['int8_speedup_vs_baseline']:.2f} vs {v['baseline']})"
        )
    return "\n".join(lines)
