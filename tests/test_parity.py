"""Our labels, scores, entities and offsets equal Hugging Face pipelines on the same model, on
both engines: torch fp32 and ONNX Runtime fp32 (its fused graph)."""

from __future__ import annotations

import pytest
from conftest import tiny_config
from hf_reference import assert_entities_equal, hf_classify, hf_ner

from pipeline import Annotator, PipelineConfig


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def annotators(request, tiny_models, tmp_path_factory):
    cache = {}
    builds = tmp_path_factory.mktemp("onnx-builds")

    def get(**over) -> Annotator:
        key = tuple(sorted(over.items()))
        if key not in cache:
            cfg = tiny_config(*tiny_models, runtime__engine=request.param, **over) | {
                "cache_dir": str(builds)
            }
            ann = cache[key] = Annotator(PipelineConfig.from_dict(cfg))
            assert {lm.engine for lm in ann.models.values()} == {request.param}
        return cache[key]

    return get


@pytest.mark.parametrize("aggregation", ["simple", "first", "average", "max"])
def test_ner_equals_hf_with_windows(tiny_models, corpus, annotators, aggregation):
    ann = annotators(ner__aggregation=aggregation)
    ref = hf_ner(tiny_models[1], max_length=32, stride=8, aggregation=aggregation)(corpus)
    rows = ann.annotate(corpus)
    assert sum(len(r) for r in ref) > 50, "the reference should find many entities"
    for text, row, expected in zip(corpus, rows, ref, strict=True):
        assert row["error"] is None
        assert_entities_equal(row["entities"], expected, text)


def test_ner_none_equals_hf_on_single_window_texts(tiny_models, corpus, annotators):
    ann = annotators(ner__aggregation="none", ner__max_length=512, ner__stride=128)
    tok = ann.models["ner"].tokenizer
    texts = [t for t in corpus if len(tok(t)["input_ids"]) <= 512]  # HF cannot window with "none"
    assert len(texts) >= len(corpus) - 2
    ref = hf_ner(tiny_models[1], max_length=512, stride=None, aggregation="none")(texts)
    for text, row, expected in zip(texts, ann.annotate(texts), ref, strict=True):
        assert_entities_equal(row["entities"], expected, text)


def test_ner_equals_hf_at_realistic_window_size(tiny_models, corpus, annotators):
    ann = annotators(ner__max_length=128, ner__stride=32, ner__aggregation="first")
    texts = corpus + [" ".join(corpus) * 3]
    ref = hf_ner(tiny_models[1], max_length=128, stride=32, aggregation="first")(texts)
    for text, row, expected in zip(texts, ann.annotate(texts), ref, strict=True):
        assert_entities_equal(row["entities"], expected, text)


def test_classification_equals_hf_truncated(tiny_models, corpus, annotators):
    ann = annotators()
    ref = hf_classify(tiny_models[0], max_length=32)(corpus)
    for text, row, expected in zip(corpus, ann.annotate(corpus), ref, strict=True):
        assert row["label"] == expected["label"], text
        assert row["label_score"] == pytest.approx(expected["score"], abs=1e-4)


def test_classification_top_k_equals_hf(tiny_models, corpus, annotators):
    ann = annotators(classifier__top_k=3)
    ref = hf_classify(tiny_models[0], max_length=32, top_k=3)(corpus)
    for row, expected in zip(ann.annotate(corpus), ref, strict=True):
        assert [x["label"] for x in row["labels"]] == [x["label"] for x in expected]
        assert [x["score"] for x in row["labels"]] == pytest.approx([x["score"] for x in expected], abs=1e-4)
        assert row["label"] == expected[0]["label"]


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_separate_tokenizers_still_equal_hf(tiny_models, cased_ner, corpus, engine, tmp_path):
    cfg = tiny_config(tiny_models[0], cased_ner, runtime__engine=engine) | {"cache_dir": str(tmp_path)}
    ann = Annotator(PipelineConfig.from_dict(cfg))
    assert not ann.encoder.shared, "a cased tokenizer must not share the uncased stream"
    ref = hf_ner(cased_ner, max_length=32, stride=8, aggregation="simple")(corpus)
    cls_ref = hf_classify(tiny_models[0], max_length=32)(corpus)
    for text, row, expected, c in zip(corpus, ann.annotate(corpus), ref, cls_ref, strict=True):
        assert_entities_equal(row["entities"], expected, text)
        assert row["label"] == c["label"]


def test_shared_tokenization_when_tokenizers_match(tiny_models, annotators):
    assert annotators().encoder.shared


def test_mean_of_window_logits_for_long_text(tiny_models, corpus, annotators):
    """long_text: mean = softmax of the mean logits over HF's overflow windows (stride from config)."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ann = annotators(classifier__long_text="mean", classifier__stride=4)
    tok = AutoTokenizer.from_pretrained(str(tiny_models[0]))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_models[0]), dtype=torch.float32)
    labels = model.config.id2label
    texts = [t for t in corpus if len(tok(t)["input_ids"]) > 32] + [" ".join(corpus), " ".join(corpus[:8])]
    assert len(texts) >= 4
    for text, row in zip(texts, ann.annotate(texts), strict=True):
        enc = tok(
            text, truncation=True, max_length=32, stride=4, return_overflowing_tokens=True, padding=True
        )
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])
            ).logits.numpy()
        assert len(logits) > 1
        mean = logits.mean(axis=0)
        probs = np.exp(mean - mean.max()) / np.exp(mean - mean.max()).sum()
        assert row["label"] == labels[int(probs.argmax())]
        assert row["label_score"] == pytest.approx(float(probs.max()), abs=1e-4)
