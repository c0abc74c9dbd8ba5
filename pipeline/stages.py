"""The batch job's CPU stages, as thin Arrow adapters over encode and decode.

Encode and decode run as CPU tasks (tokenizers and label maps only, cached per worker
process); `with_inferred` puts an infer stage's results (pipeline.infer_stage) into the
block. All call the same code as `Annotator`, so batch output equals in-process output.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa

from pipeline import heap
from pipeline.columns import (
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
from pipeline.infer import Inferred
from pipeline.revisions import check_revisions
from pipeline.row_errors import InvalidUtf8
from pipeline.tally import report

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


def texts_of(column: pa.ChunkedArray) -> list[object]:
    """The column's values as Python objects; cells that are not valid UTF-8 (Arrow reads them,
    Python cannot decode them) become `InvalidUtf8`, which gets its row an error, not the block."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        raw = column.cast(pa.binary()) if pa.types.is_string(column.type) else column.cast(pa.large_binary())
        out: list[object] = []
        for value in raw.to_pylist():
            try:
                out.append(None if value is None else value.decode())
            except UnicodeDecodeError:
                out.append(InvalidUtf8(value))
        return out


def encode_batch(
    table: pa.Table, *, config: dict[str, Any], text_column: str, expected: dict | None = None
) -> pa.Table:
    """CPU task: tokenize the text column once per distinct tokenizer."""
    light = light_engine(config)
    check_revisions(expected or {}, light.revisions, "the model source")
    docs = light.encoder.encode(texts_of(table.column(text_column)))
    columns = encoded_to_columns(docs, light.encoder, offset_groups(light.encoder, light.models))
    out = replace_columns(table, columns)
    heap.trim()
    return out


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
    check_revisions(json.loads(metadata).get("models") or {}, light.revisions, "the model source")
    texts = texts_of(table.column(text_column))
    outputs = columns_to_outputs(table, light.models, light.encoder.group_of)
    decoded = light.decoder.decode_outputs(texts, outputs)
    out = replace_columns(table, decoded.to_columns(prefix), drop=internal_columns(table))
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = metadata.encode()
    report(tally, {"documents": len(texts)})  # the night's errors are read back from its output
    heap.trim()
    return out.replace_schema_metadata(meta)
