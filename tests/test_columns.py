"""The Arrow columns between the stages lose nothing: the three stage functions, run in this
process on blocks shaped the way Ray Data hands them over (several chunks, sliced), give
exactly the rows `Annotator` gives without Arrow in between."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import assert_rows_close, tiny_config

from pipeline import Annotator, PipelineConfig
from pipeline.columns import columns_to_encoded, internal_columns
from pipeline.stages import decode_batch, encode_batch, with_inferred


def _ray_like_block(texts: list, pad: int) -> pa.Table:
    """ids + texts in two chunks, sliced out of a larger table (non-zero offsets everywhere)."""
    ids = list(range(-pad, 0)) + list(range(len(texts))) + list(range(len(texts), len(texts) + pad))
    full = [f"pad {i}" for i in range(pad)] + texts + [f"pad {i}" for i in range(pad)]
    half = len(full) // 2
    table = pa.concat_tables(
        [
            pa.table({"id": ids[:half], "text": pa.array(full[:half], pa.string())}),
            pa.table({"id": ids[half:], "text": pa.array(full[half:], pa.string())}),
        ]
    )
    return table.slice(pad, len(texts))


@pytest.mark.parametrize("models", ["both", "classifier", "ner", "both-cased"])
def test_stage_columns_round_trip_equals_annotator(tiny_models, cased_ner, corpus, models):
    cls = tiny_models[0] if models != "ner" else None
    ner = {"classifier": None, "both-cased": cased_ner}.get(models, tiny_models[1])
    cfg_dict = tiny_config(cls, ner, **({"classifier__top_k": 2} if cls else {}))
    cfg = PipelineConfig.from_dict(cfg_dict)
    texts = [*corpus, None, "Tim Cook flew to Paris.", "x" * 300]
    ann = Annotator(cfg)
    want = ann.annotate(texts)

    config = cfg.model_dump(mode="json")
    table = _ray_like_block(texts, pad=5)
    assert table.column("text").num_chunks == 2
    encoded = encode_batch(table, config=config, text_column="text")
    docs = columns_to_encoded(encoded, ann.encoder.group_of)
    inferred = with_inferred(encoded, ann.engine.infer(docs), ann.models)
    out = decode_batch(inferred.slice(0), config=config, text_column="text", prefix="p_")

    assert out.column_names[:2] == ["id", "text"] and not internal_columns(out)
    assert out.column("id").to_pylist() == list(range(len(texts)))
    got = [{k[2:] if k.startswith("p_") else k: v for k, v in row.items()} for row in out.to_pylist()]
    assert_rows_close(got, want, tol=1e-6)
    if cls is not None:
        assert [r["labels"] for r in got] == [
            None
            if r["labels"] is None
            else [{"label": x["label"], "score": pytest.approx(x["score"], abs=1e-6)} for x in r["labels"]]
            for r in want
        ]
