"""Which engine and dtype run these models best on this CPU? `pipeline models tune` measures
every variant on the config's own input and records the verdict `runtime.dtype: auto`
follows, so auto never trades accuracy for speed on a guess, nor runs slower than torch fp32.

The variants: torch fp32 (the reference every other is held to), torch bf16 (only on CPUs
with native bf16: emulated, it is several times slower), and ONNX Runtime fp32 and int8 (with
the int8 extra). Each is held to its kind's agreement gate against torch fp32 (labels >= 99%
for a classifier, exact-span entity F1 >= 0.98 for NER, cosine >= 0.99 for embeddings). The
choice is the fastest variant that holds the gate and beats torch fp32 by more than this
machine's noise; else torch fp32. The best per engine is kept too, for a config that fixes
the engine and leaves the dtype to auto.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.annotator import Annotator
from pipeline.config import PipelineConfig
from pipeline.inputs import InputError, discover
from pipeline.kinds import slots
from pipeline.models import cpu_has_fast_bf16, cpu_name, default_cache_dir
from pipeline.ort_engine import available, write_verdict
from pipeline.storage import arrow_filesystem

MIN_SPEEDUP = 1.05  # below this, "faster" is within this machine's run-to-run noise
REFERENCE = ("torch", "fp32")


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


def variants() -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The variants worth measuring on this machine, and why the others are left out."""
    run = [REFERENCE]
    skipped = {}
    if cpu_has_fast_bf16():
        run.append(("torch", "bf16"))
    else:
        skipped["torch bf16"] = "no native bf16 on this CPU: emulated, several times slower"
    if available():
        run += [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    else:
        skipped["onnxruntime"] = "ONNX Runtime is not installed (pip install -e '.[int8]')"
    return run, skipped


def _with(cfg: PipelineConfig, engine: str, dtype: str) -> PipelineConfig:
    """On the CPU whatever the config says: a verdict is about this CPU."""
    runtime = cfg.runtime.model_copy(update={"engine": engine, "dtype": dtype, "device": "cpu"})
    return cfg.model_copy(update={"runtime": runtime})


def _timed(cfg: PipelineConfig, texts: list[str], repeats: int) -> tuple[list[dict], dict, dict]:
    """Annotate `texts` `repeats` times: (rows, the fastest pass's forward seconds per model,
    {model: (source, revision)}). The models are let go on return: one variant in memory at a time."""
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


def label(variant: tuple[str, str]) -> str:
    return " ".join(variant)


def measure(cfg: PipelineConfig, texts: list[str], repeats: int = 2) -> dict[str, dict[str, Any]]:
    """Every variant on the same texts; one verdict per model, written beside its ONNX builds."""
    run, skipped = variants()
    runs = {}
    for v in run:
        try:
            runs[v] = _timed(_with(cfg, *v), texts, repeats)
        except Exception as exc:  # noqa: BLE001 - one variant that cannot run here (an export) is left out
            if v == REFERENCE:
                raise
            skipped[label(v)] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    ref_rows, ref_seconds, ref_models = runs[REFERENCE]
    verdicts = {}
    by_name = {slot.name: slot for slot in slots(cfg.models)}
    for task, (source, revision) in ref_models.items():
        slot = by_name[task]
        metric, floor = slot.kind.gate  # each kind's own agreement measure and floor
        table = {}
        for v, (rows, seconds, _) in runs.items():
            score = slot.kind.agreement(rows, ref_rows, slot.columns)[metric]
            speed = ref_seconds[task] / seconds[task]
            table[label(v)] = {
                "engine": v[0],
                "dtype": v[1],
                "forward_s": round(seconds[task], 3),
                "speed_vs_torch_fp32": round(speed, 2),
                metric: score,
                "meets_gate": score >= floor,
                "faster": v == REFERENCE or speed >= MIN_SPEEDUP,
            }
        choice, best_by_engine = choose(table)
        verdict = {
            "task": task,
            "source": source,
            "revision": revision,
            "texts": len(texts),
            "gate": {metric: floor},
            "variants": table,
            "skipped": skipped,
            "choice": choice,
            "best_by_engine": best_by_engine,
            "cpu": cpu_name(),
            "threads": cfg.runtime.num_threads,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        verdict["path"] = str(
            write_verdict(slot.kind.default_name, revision, default_cache_dir(cfg), verdict)
        )
        verdicts[task] = verdict
    return verdicts


def choose(table: dict[str, dict[str, Any]]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The fastest variant that holds the gate and beats torch fp32 beyond noise (else torch
    fp32); and the same choice within each engine, against that engine's own fp32 (else the
    fastest of its variants that holds the gate, else its fp32)."""

    def pick(rows: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, str]:
        if base["meets_gate"]:
            bar = base["speed_vs_torch_fp32"] * MIN_SPEEDUP
            good = [r for r in rows if r["meets_gate"] and (r is base or r["speed_vs_torch_fp32"] >= bar)]
        else:
            good = [r for r in rows if r["meets_gate"]] or [base]
        best = max(good, key=lambda r: r["speed_vs_torch_fp32"], default=base)
        return {"engine": best["engine"], "dtype": best["dtype"]}

    per_engine: dict[str, list[dict[str, Any]]] = {}
    for row in table.values():
        per_engine.setdefault(row["engine"], []).append(row)
    best_by_engine = {
        engine: pick(rows, next((r for r in rows if r["dtype"] == "fp32"), rows[0]))
        for engine, rows in per_engine.items()
    }
    return pick(list(table.values()), table[label(REFERENCE)]), best_by_engine


def summary(verdicts: dict[str, dict[str, Any]]) -> str:
    lines = []
    for task, v in verdicts.items():
        metric, floor = next(iter(v["gate"].items()))
        lines.append(f"{task} ({v['source']}, {v['texts']} texts, {v['cpu']}, gate {metric} >= {floor}):")
        lines.append(f"  {'variant':18} {'forward s':>10} {'vs torch fp32':>14} {metric:>14}  gate")
        for name, d in v["variants"].items():
            mark = "ok" if d["meets_gate"] else "MISSED"
            lines.append(
                f"  {name:18} {d['forward_s']:10.2f} {'x' + format(d['speed_vs_torch_fp32'], '.2f'):>14} "
                f"{d[metric]:14.4f}  {mark}"
            )
        for name, why in v["skipped"].items():
            lines.append(f"  {name:18} not measured: {why}")
        choice = label((v["choice"]["engine"], v["choice"]["dtype"]))
        lines.append(f"  -> dtype auto runs {choice} here")
    return "\n".join(lines)
