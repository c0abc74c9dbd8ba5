"""The annotation processor in a Ray Data pipeline of the user's own: JSON lines, in-memory items,
a write of the user's; rows equal `Annotator`'s, input columns kept, the same clear errors."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import ray
from conftest import assert_rows_close, tiny_config, varied_corpus

from pipeline import Annotator, PipelineConfig
from pipeline.inputs import InputError
from pipeline.ray_data import build_processor

pytestmark = pytest.mark.slow


def _cfg(tiny_models, tmp_path, **sections) -> PipelineConfig:
    cfg = tiny_config(*tiny_models) | {"cache_dir": str(tmp_path / "cache")}
    cfg["ray"] = {"infer_actors": 1, "cpus_per_actor": 0.5, "cpus_per_task": 0.25, "docs_per_batch": 16}
    return PipelineConfig.from_dict(cfg | sections)


def _annotator(cfg: PipelineConfig) -> Annotator:
    return Annotator(
        PipelineConfig.from_dict({"models": cfg.models.model_dump(), "runtime": cfg.runtime.model_dump()})
    )


def test_json_lines_through_the_processor_equal_annotator_and_keep_every_column(
    ray_cluster, tiny_models, tmp_path
):
    texts = varied_corpus()
    lines = [
        {"doc": f"d{i}", "text": t, "meta": {"feed": i % 3}, "score": i / 10} for i, t in enumerate(texts)
    ]
    (tmp_path / "dump.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    cfg = _cfg(tiny_models, tmp_path)
    ds = build_processor(cfg)(ray.data.read_json(str(tmp_path / "dump.jsonl")))
    rows = sorted(ds.take_all(), key=lambda r: int(r["doc"][1:]))
    assert [r["doc"] for r in rows] == [x["doc"] for x in lines], "every row once, no id column needed"
    assert [(r["meta"], r["score"], r["text"]) for r in rows] == [
        (x["meta"], x["score"], x["text"]) for x in lines
    ]
    assert list(rows[0])[-4:] == ["label", "label_score", "entities", "error"]
    assert_rows_close(rows, _annotator(cfg).annotate(texts))


def test_items_then_the_users_own_write(ray_cluster, tiny_models, tmp_path):
    texts = ["Angela Merkel met Tim Cook in Berlin.", None, "Short.", ""]
    cfg = _cfg(tiny_models, tmp_path, output={"path": "unused", "prefix": "pred_"})
    build_processor(cfg)(ray.data.from_items([{"text": t} for t in texts])).write_parquet(
        str(tmp_path / "out")
    )
    table = pq.read_table(tmp_path / "out")
    assert sorted(table.column_names) == sorted(
        ["text", "pred_label", "pred_label_score", "pred_entities", "pred_error"]
    )
    got = {r["text"]: r for r in table.to_pylist()}
    assert got[None]["pred_error"] == "text is null" and got[""]["pred_error"] is None
    want = dict(zip(texts, _annotator(cfg).annotate(texts), strict=True))
    for text in texts:
        row = {k.removeprefix("pred_"): v for k, v in got[text].items()}
        assert_rows_close([row], [want[text]])
    meta = json.loads(pq.read_schema(next((tmp_path / "out").glob("*.parquet"))).metadata[b"bert_pipeline"])
    assert meta["models"]["ner"]["revision"].startswith("local:"), "the lineage travels with the rows"


def test_a_missing_text_column_or_a_clash_is_refused_before_any_work(ray_cluster, tiny_models, tmp_path):
    processor = build_processor(_cfg(tiny_models, tmp_path, input={"path": "unused", "text_column": "body"}))
    with pytest.raises(InputError, match=r"the dataset has no text column 'body' \(columns: text\)"):
        processor(ray.data.from_items([{"text": "x"}]))
    with pytest.raises(InputError, match=r"input columns \['label'\] would be overwritten by the output"):
        build_processor(_cfg(tiny_models, tmp_path))(ray.data.from_items([{"text": "x", "label": "gold"}]))
