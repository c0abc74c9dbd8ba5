"""Any number of named models in one pass: each equals its Hugging Face pipeline, models with
the same tokenizer share one tokenization, and every path (in-process, Arrow stages, the
Ray Data job, Serve over HTTP) gives the same per-model columns."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_rows_close, deploy, read_output, relabeled_model, tiny_config
from hf_reference import assert_entities_equal, hf_classify, hf_ner

from pipeline import Annotator, PipelineConfig, batch
from pipeline.config import ConfigError
from pipeline.kinds import output_fields
from pipeline.stages import decode_batch, encode_batch, with_inferred

SENTIMENTS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def sentiment_model(tmp_path_factory, tiny_models, cased_ner):
    """A second classifier: other weights, three labels (the topic one has four), and the
    cased tokenizer of `cased_ner`, so the four models below read two token streams."""
    out = tmp_path_factory.mktemp("sentiment") / "sentiment"
    return relabeled_model(tiny_models[0], out, SENTIMENTS, False, 7, tokenizer_from=cased_ner)


def multi_config(tiny_models, cased_ner, sentiment_model) -> dict:
    cfg = tiny_config(*tiny_models)
    cfg["models"]["sentiment"] = {
        "kind": "classification",
        "source": str(sentiment_model),
        "max_length": 24,
        "top_k": 2,
    }
    cfg["models"]["pii"] = {
        "kind": "ner",
        "source": str(cased_ner),
        "max_length": 40,
        "stride": 10,
        "aggregation": "first",
    }
    return cfg


@pytest.fixture(scope="module")
def multi(tiny_models, cased_ner, sentiment_model):
    return multi_config(tiny_models, cased_ner, sentiment_model)


@pytest.fixture(scope="module")
def multi_ann(multi):
    return Annotator(PipelineConfig.from_dict(multi))


def test_every_named_model_equals_its_hf_pipeline(multi_ann, tiny_models, cased_ner, sentiment_model, corpus):
    assert multi_ann.encoder.group_of == {"classifier": 0, "ner": 0, "sentiment": 1, "pii": 1}
    assert len(multi_ann.encoder.groups) == 2, "two tokenizers, two tokenizations: not four"
    rows = multi_ann.annotate(corpus)
    topic = hf_classify(tiny_models[0], max_length=32)(corpus)
    tone = hf_classify(sentiment_model, max_length=24, top_k=2)(corpus)
    ner = hf_ner(tiny_models[1], max_length=32, stride=8, aggregation="simple")(corpus)
    pii = hf_ner(cased_ner, max_length=40, stride=10, aggregation="first")(corpus)
    assert {r["sentiment_label"] for r in rows} <= set(SENTIMENTS)
    for text, row, t, s, n, p in zip(corpus, rows, topic, tone, ner, pii, strict=True):
        assert row["error"] is None
        assert row["label"] == t["label"] and row["label_score"] == pytest.approx(t["score"], abs=1e-4)
        assert row["sentiment_label"] == s[0]["label"], text
        assert row["sentiment_score"] == pytest.approx(s[0]["score"], abs=1e-4)
        assert [x["label"] for x in row["sentiment_labels"]] == [x["label"] for x in s]
        assert_entities_equal(row["entities"], n, text)
        assert_entities_equal(row["pii_entities"], p, text)
    assert "labels" not in rows[0], "no top_k on the classifier: no labels field"


def test_columns_and_order(multi, tiny_models):
    # the default names (classifier, ner) take the unprefixed columns
    defaults = PipelineConfig.from_dict(tiny_config(*tiny_models))
    assert [f.name for f in output_fields(defaults.models)] == ["label", "label_score", "entities", "error"]
    only_ner = PipelineConfig.from_dict(tiny_config(None, tiny_models[1]))
    assert [f.name for f in output_fields(only_ner.models, "p_")] == [
        "p_label",
        "p_label_score",
        "p_entities",
        "p_error",
    ], "classifier and ner keep their columns (null) whichever models a config has"
    # YAML order does not matter: classifier, ner, then the others as written
    shuffled = {"models": dict(reversed(list(multi["models"].items())))}
    names = [f.name for f in output_fields(PipelineConfig.from_dict(shuffled).models)]
    assert names == [
        "label",
        "label_score",
        "entities",
        "pii_entities",
        "sentiment_label",
        "sentiment_score",
        "sentiment_labels",
        "error",
    ]


@pytest.mark.parametrize(
    "models, message",
    [
        ({"sentiment": {"source": "x"}}, "model 'sentiment' needs a kind"),
        ({"tox": {"source": "x", "kind": "regression"}}, "models.tox: kind must be one of"),
        ({"Tox-1": {"source": "x", "kind": "ner"}}, "model name 'Tox-1'"),
        (
            {"ner": {"source": "x"}, "tox": {"source": "x", "kind": "ner", "aggregation": "best"}},
            "models.tox.aggregation",
        ),
    ],
)
def test_bad_model_entries_are_named(models, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_dict({"models": models})


def test_clashing_columns_are_refused(tiny_models):
    cfg = PipelineConfig.from_dict(
        {"models": {"classifier": {"source": "a"}, "label": {"source": "b", "kind": "classification"}}}
    )
    with pytest.raises(ConfigError, match="label_score clashes"):
        output_fields(cfg.models)


def test_arrow_stages_round_trip_equals_annotator(multi, multi_ann, corpus):
    texts = [*corpus, None, "x" * 300]
    table = pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())})
    config = PipelineConfig.from_dict(multi).model_dump(mode="json")
    encoded = encode_batch(table, config=config, text_column="text")
    # offsets travel only for the streams an NER model decodes; both streams have one here
    assert {"__bp_t0_ids", "__bp_t0_offsets", "__bp_t1_ids", "__bp_t1_offsets"} <= set(encoded.column_names)
    from pipeline.columns import columns_to_encoded

    docs = columns_to_encoded(encoded, multi_ann.encoder.group_of)
    inferred = with_inferred(encoded, multi_ann.engine.infer(docs), multi_ann.models)
    out = decode_batch(inferred, config=config, text_column="text")
    assert out.column_names == ["id", "text"] + [
        f.name for f in output_fields(PipelineConfig.from_dict(multi).models)
    ]
    want = multi_ann.annotate(texts)
    got = out.to_pylist()
    assert_rows_close(got, want, tol=1e-6)
    for a, b in zip(got, want, strict=True):
        assert a["sentiment_label"] == b["sentiment_label"]
        assert [(e["label"], e["start"], e["end"]) for e in a["pii_entities"] or []] == [
            (e["label"], e["start"], e["end"]) for e in b["pii_entities"] or []
        ]


def test_classifier_only_streams_carry_no_offsets(tiny_models, sentiment_model):
    cfg = {"models": {"sentiment": {"kind": "classification", "source": str(sentiment_model)}}}
    table = pa.table({"id": [1], "text": ["Angela Merkel met Tim Cook."]})
    encoded = encode_batch(
        table, config=PipelineConfig.from_dict(cfg).model_dump(mode="json"), text_column="text"
    )
    assert "__bp_t0_ids" in encoded.column_names and "__bp_t0_offsets" not in encoded.column_names


class Recorded:
    """A model that notes which thread ran each forward, when, with how many torch threads, and
    refuses any batch that holds `poison` (the way a poisoned input fails a real forward)."""

    def __init__(self, model, name: str, calls: list, poison: int) -> None:
        self.model, self.name, self.calls, self.poison = model, name, calls, poison

    def __call__(self, input_ids, attention_mask):
        start = time.perf_counter()
        if bool((input_ids == self.poison).any()):
            raise RuntimeError(f"{self.name} refuses this input")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        thread = threading.current_thread().name
        self.calls.append((self.name, thread, torch.get_num_threads(), start, time.perf_counter()))
        return out


def _recorded(ann: Annotator, calls: list) -> Annotator:
    for name, runner in ann.engine.runners.items():
        poison = ann.models[name].tokenizer.mask_token_id
        runner.model = Recorded(runner.model, name, calls, poison)
    return ann


def test_models_run_side_by_side_and_answer_as_one_after_the_other(tiny_models, corpus):
    """With parallel_models (the default) each model forwards on a thread of its own, at the
    same time as the other, with the torch threads shared out; the answers, errors included
    (a row failing in both models gets the first model's error), equal one after the other."""
    threads_before = torch.get_num_threads()
    try:
        both, apart = [], []
        side_by_side = _recorded(
            Annotator(PipelineConfig.from_dict(tiny_config(*tiny_models, runtime__num_threads=2))), both
        )
        tokenizer = side_by_side.models["classifier"].tokenizer
        assert not any(tokenizer.mask_token_id in tokenizer(t).input_ids for t in corpus)
        texts = [*corpus * 8, "a [MASK] walks in", None]
        rows = side_by_side.annotate(texts)
        serial_cfg = tiny_config(*tiny_models, runtime__num_threads=2, runtime__parallel_models=False)
        serial_rows = _recorded(Annotator(PipelineConfig.from_dict(serial_cfg)), apart).annotate(texts)
    finally:
        torch.set_num_threads(threads_before)
    assert {(name, thread, n) for name, thread, n, *_ in both} == {
        ("classifier", "model-classifier_0", 1),
        ("ner", "model-ner_0", 1),
    }
    spans = {name: [(a, b) for n, _, _, a, b in both if n == name] for name in ("classifier", "ner")}
    assert any(a < d and c < b for a, b in spans["classifier"] for c, d in spans["ner"]), "never ran at once"
    assert {(name, thread, n) for name, thread, n, *_ in apart} == {
        ("classifier", threading.main_thread().name, 2),
        ("ner", threading.main_thread().name, 2),
    }
    assert_rows_close(rows, serial_rows)
    failed = [i for i, row in enumerate(rows) if (row["error"] or "").startswith("inference failed")]
    assert failed == [len(texts) - 2]
    refused = "inference failed: RuntimeError: classifier refuses this input"
    assert rows[-2]["error"] == serial_rows[-2]["error"] == refused


def test_multi_models_online_and_in_the_nightly_job(serve_base, multi, multi_ann, tmp_path):
    """One app and one night with four named models: same rows as in-process; a request can
    ask for a subset by name; unknown names get 422; lineage and /v1/models name all four."""
    from ray import serve

    cfg = {
        **multi,
        "serve": {"model": {"num_cpus": 0.25}, "ingress": {"num_cpus": 0.25}, "max_texts": 16},
    }
    url = deploy(cfg, "multi", "/multi", serve_base)
    try:
        texts = ["Angela Merkel met Tim Cook in Berlin.", "Shares of Volkswagen fell in Frankfurt.", None]
        want = multi_ann.annotate(texts)
        got = httpx.post(url + "/v1/annotate", json={"texts": texts}, timeout=60)
        assert got.status_code == 200, got.text
        assert_rows_close(got.json()["results"], want)
        assert [r["sentiment_label"] for r in got.json()["results"]] == [r["sentiment_label"] for r in want]
        assert set(got.json()["model"]) == {"classifier", "ner", "sentiment", "pii"}

        subset = httpx.post(url + "/v1/annotate", json={"texts": texts[:1], "models": ["sentiment", "pii"]})
        (row,) = subset.json()["results"]
        assert row["label"] is None and row["entities"] is None, "models not asked for are not run"
        assert row["sentiment_label"] == want[0]["sentiment_label"]
        assert [e["text"] for e in row["pii_entities"]] == [e["text"] for e in want[0]["pii_entities"]]

        (cls_row,) = httpx.post(url + "/v1/classify", json={"texts": texts[:1]}).json()["results"]
        assert (
            cls_row["label"] == want[0]["label"] and cls_row["sentiment_label"] == want[0]["sentiment_label"]
        )
        assert cls_row["entities"] is None and cls_row["pii_entities"] is None

        for path, body, words in [
            ("/v1/annotate", {"texts": ["x"], "models": ["toxicity"]}, "unknown model(s) ['toxicity']"),
            ("/v1/classify", {"texts": ["x"], "models": ["pii"]}, "not classification models"),
            ("/v1/annotate", {"texts": ["x"], "models": []}, "models"),
            ("/v1/annotate", {"texts": ["x"], "model": ["ner"]}, "model"),
        ]:
            r = httpx.post(url + path, json=body, timeout=30)
            assert r.status_code == 422 and words in r.json()["detail"], (body, r.text)
        described = httpx.get(url + "/v1/models").json()["models"]
        assert {n: d["kind"] for n, d in described.items()} == {
            "classifier": "classification",
            "ner": "ner",
            "sentiment": "classification",
            "pii": "ner",
        }
        assert described["sentiment"]["labels"] == SENTIMENTS
    finally:
        serve.delete("multi")

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [0, 1, 2], "text": texts}), tmp_path / "in" / "a.parquet")
    job = {
        **multi,
        "ray": {"infer_actors": 1, "cpus_per_actor": 0.5, "cpus_per_task": 0.25, "docs_per_batch": 64},
        "input": {"path": str(tmp_path / "in")},
        "output": {"path": str(tmp_path / "out")},
        "cache_dir": str(tmp_path / "cache"),
    }
    report = batch.run(PipelineConfig.from_dict(job), echo=lambda s: None)
    rows = read_output(tmp_path / "out")
    assert_rows_close(rows, want)
    assert [r["sentiment_label"] for r in rows] == [r["sentiment_label"] for r in want]
    assert set(report["models"]) == {"classifier", "ner", "sentiment", "pii"}
    assert set(report["model_dtypes"]) == {"classifier", "ner", "sentiment", "pii"}
    meta = pq.read_schema(next((tmp_path / "out").glob("*.parquet"))).metadata[b"bert_pipeline"]
    assert set(json.loads(meta)["models"]) == {"classifier", "ner", "sentiment", "pii"}
