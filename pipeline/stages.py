"""The three Ray Data stages of the batch job, as thin Arrow adapters over encode/infer/decode.

Encode and decode run as CPU tasks (tokenizer and labels only, cached per worker process);
infer runs in a fixed pool of actors that hold the weights. All three call the same code
as `Annotator`, so batch output equals in-process output.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pyarrow as pa

from pipeline import heap
from pipeline.columns import (
    columns_to_encoded,
    columns_to_outputs,
    encoded_to_columns,
    ids_only_columns,
    inferred_to_columns,
    internal_columns,
    offset_groups,
    replace_columns,
)
from pipeline.config import PipelineConfig
from pipeline.engine import Engine
from pipeline.infer import InferenceEngine, Inferred
from pipeline.tally import DTYPE_KEY, report

log = logging.getLogger(__name__)
METADATA_KEY = b"bert_pipeline"
_cache: dict[tuple[str, str], Any] = {}


def _cached(kind: str, config: dict[str, Any], build):
    cfg = PipelineConfig.model_validate(config)
    key = (kind, cfg.config_hash())
    if key not in _cache:
        _cache[key] = build(cfg)
    return _cache[key]


def light_engine(config: dict[str, Any]) -> Engine:
    """Tokenizers and label maps only, built once per worker process and config."""
    return _cached("light", config, lambda cfg: Engine.build(cfg, weights=False))


def encode_batch(table: pa.Table, *, config: dict[str, Any], text_column: str) -> pa.Table:
    """CPU task: tokenize the text column once per distinct tokenizer."""
    light = light_engine(config)
    docs = light.encoder.encode(table.column(text_column).to_pylist())
    columns = encoded_to_columns(docs, light.encoder, offset_groups(light.encoder, light.models))
    out = replace_columns(table, columns)
    heap.trim()
    return out


class InferActor:
    """GPU (or CPU) actor: holds the weights and runs the shared ModelRunner over each batch."""

    def __init__(self, config: dict[str, Any], tally: str | None = None) -> None:
        import ray
        import torch

        cfg = PipelineConfig.model_validate(config)
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.tally = tally
        self.started = False
        if ray.get_gpu_ids() and not torch.cuda.is_available():
            log.warning("this actor was given a GPU but CUDA is not available here; running on CPU")
            report(tally, {"cpu_fallback_actors": 1})
        built = Engine.build(cfg)
        self.models = built.models
        self.group_of = built.encoder.group_of
        self.engine: InferenceEngine = built.infer  # type: ignore[assignment]
        # what each model runs in on this actor (dtype auto may differ between nodes)
        report(tally, {f"{DTYPE_KEY}{task}:{lm.dtype}": 1 for task, lm in self.models.items()})
        log.info(
            "inference actor ready on %s (%s; pid %d)",
            next(iter(self.engine.runners.values())).device,
            ", ".join(f"{task} {lm.dtype}" for task, lm in self.models.items()),
            os.getpid(),
        )

    def __call__(self, table: pa.Table) -> pa.Table:
        self.started = mark_first_batch(self.tally, self.started)
        before = self.engine.stats()
        docs = columns_to_encoded(table, self.group_of)
        results = self.engine.infer(docs)
        report_infer(self.tally, self.engine.stats().since(before))
        return with_inferred(table, results, self.models)


def mark_first_batch(tally: str | None, started: bool) -> bool:
    """Tell the run's tally when the model got its first batch (start-up time in the report)."""
    if tally and not started:
        report(tally, {"first_infer_at": time.time()})
    return True


def report_infer(tally: str | None, delta: dict[str, float]) -> None:
    report(
        tally,
        {
            "windows": delta["sequences"],
            "tokens": delta["real_tokens"],
            "padded_tokens": delta["padded_tokens"],
            "forward_s": delta["forward_s"],
            "oom_splits": delta["oom_splits"],
        },
    )


def with_inferred(table: pa.Table, results: list[Inferred], models: dict) -> pa.Table:
    """The encoded batch plus model outputs, minus token ids that decoding does not read."""
    return replace_columns(table, inferred_to_columns(results, models), drop=ids_only_columns(table))


def decode_batch(
    table: pa.Table,
    *,
    config: dict[str, Any],
    text_column: str,
    prefix: str = "",
    metadata: str = "{}",
    tally: str | None = None,
) -> pa.Table:
    """CPU task: model outputs -> every model's output columns and error; internal columns dropped."""
    light = light_engine(config)
    texts = table.column(text_column).to_pylist()
    outputs = columns_to_outputs(table, light.models, light.encoder.group_of)
    decoded = light.decoder.decode_outputs(texts, outputs)
    out = replace_columns(table, decoded.to_columns(prefix), drop=internal_columns(table))
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = metadata.encode()
    report(tally, {"documents": len(texts), "errors": sum(e is not None for e in decoded.error)})
    heap.trim()
    return out.replace_schema_metadata(meta)
