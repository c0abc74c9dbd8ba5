"""The Hugging Face Inference API shape, as `huggingface_hub.InferenceClient` calls it against a
real Serve app over HTTP: its answers equal `transformers.pipeline(...)` (and
sentence-transformers for features) and our own /v1/annotate."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from conftest import deployed, tiny_config

from pipeline.demo.random_models import minilm_dir

pytestmark = pytest.mark.slow
KEY = "hf-key-1"
TEXTS = [
    "Angela Merkel met Tim Cook in Berlin.",
    "Apple Inc. opened a store on Fifth Avenue in New York City last Tuesday.",
    'Dr. Jean-Pierre O\'Neil (CEO of Société Générale) said: "Bonjour!"',
    "İstanbul is lovely; Café naïve coöperation with 👍🏽 emoji.",
    "Siemens and Apple signed a deal in Munich on Monday",
]


@pytest.fixture(autouse=True)
def online_client(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1 (no hub here); the client talks to our server only."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)


@pytest.fixture(scope="module")
def app(serve_base, tiny_models, tmp_path_factory):
    cfg = tiny_config(*tiny_models)
    cfg["models"]["classifier"]["max_length"] = 512
    cfg["models"]["ner"].update(max_length=512, stride=128)
    cfg["models"]["embedding"] = {"source": str(minilm_dir())}
    cfg["cache_dir"] = str(tmp_path_factory.mktemp("hf-app") / "cache")
    cfg["serve"] = {
        "model": {"num_cpus": 0.25},
        "ingress": {"num_cpus": 0.25},
        "api_keys": [KEY],
        "max_texts": 8,
    }
    with deployed(cfg, "hf", "/hf", serve_base) as url:
        yield url


@pytest.fixture(scope="module")
def pipes(tiny_models):
    from transformers import pipeline

    cls, ner = (str(p) for p in tiny_models)
    return pipeline("text-classification", model=cls), {
        s: pipeline("token-classification", model=ner, aggregation_strategy=s)
        for s in ("none", "simple", "first", "average", "max")
    }


def _client(url: str, name: str):
    from huggingface_hub import InferenceClient

    return InferenceClient(model=f"{url}/models/{name}", token=KEY)


def _same_labels(got, want) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert max(abs(g["score"] - w["score"]) for g, w in zip(got, want, strict=True)) <= 1e-4


@pytest.mark.parametrize(
    "parameters",
    [{}, {"top_k": 3}, {"function_to_apply": "sigmoid"}, {"top_k": 2, "function_to_apply": "none"}],
)
def test_text_classification_equals_the_pipeline_and_our_api(app, pipes, parameters):
    client = _client(app, "classifier")
    for text in TEXTS:
        got = [{"label": e.label, "score": e.score} for e in client.text_classification(text, **parameters)]
        want = pipes[0](text, **parameters)
        _same_labels(got, want if isinstance(want, list) else [want])
    ours = httpx.post(
        app + "/v1/annotate",
        json={"texts": TEXTS, "models": ["classifier"]},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    answers = httpx.post(
        app + "/models/classifier",
        json={"inputs": TEXTS},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert [a[0]["label"] for a in answers.json()] == [r["label"] for r in ours.json()["results"]]
    # the same numbers, to the last bits that a batch's make-up moves (the planner adapts its batches)
    pairs = zip(
        [a[0]["score"] for a in answers.json()],
        [r["label_score"] for r in ours.json()["results"]],
        strict=True,
    )
    assert max(abs(a - b) for a, b in pairs) <= 1e-6


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_equals_the_pipeline(app, pipes, strategy):
    client = _client(app, "ner")
    key = "entity" if strategy == "none" else "entity_group"
    for text in TEXTS:
        got = client.token_classification(text, aggregation_strategy=strategy)
        want = pipes[1][strategy](text)
        assert [(getattr(g, key), g.word, g.start, g.end) for g in got] == [
            (w[key], w["word"], w["start"], w["end"]) for w in want
        ], text
        assert all(abs(g.score - w["score"]) <= 1e-4 for g, w in zip(got, want, strict=True))
    kept = client.token_classification(TEXTS[0], aggregation_strategy="simple", ignore_labels=["O", "PER"])
    assert kept == [
        e
        for e in client.token_classification(TEXTS[0], aggregation_strategy="simple")
        if e.entity_group != "PER"
    ]


def test_feature_extraction_equals_sentence_transformers(app):
    from sentence_transformers import SentenceTransformer

    got = _client(app, "embedding").feature_extraction(TEXTS[0])
    want = SentenceTransformer(str(minilm_dir()), device="cpu").encode([TEXTS[0]])
    assert got.shape == want.shape == (1, 384)
    assert np.abs(got - want).max() <= 1e-4
    raw = _client(app, "embedding").feature_extraction(TEXTS[0], normalize=False)
    assert np.linalg.norm(raw) > 1.5, "normalize=false gives the pooled vector as it is"


def test_what_a_request_cannot_have_is_named(app):
    auth = {"Authorization": f"Bearer {KEY}"}

    def post(name: str, body: dict, headers: dict = auth) -> httpx.Response:
        return httpx.post(f"{app}/models/{name}", json=body, headers=headers, timeout=60)

    unknown = post("classifier", {"inputs": "x", "parameters": {"top_p": 2}})
    assert unknown.status_code == 422 and "top_p" in unknown.json()["error"]
    stride = post("ner", {"inputs": "x", "parameters": {"stride": 16}})
    assert stride.status_code == 400 and "models.ner.stride = 128" in stride.json()["error"]
    base64 = post("embedding", {"inputs": "x", "parameters": {"encoding_format": "base64"}})
    assert base64.status_code == 400 and "/v1/embeddings" in base64.json()["error"]
    missing = post("sentiment", {"inputs": "x"})
    assert missing.status_code == 404 and "classifier" in missing.json()["error"]
    assert post("classifier", {"inputs": "x"}, headers={}).status_code == 401
    assert post("classifier", {"inputs": ["x"] * 9}).status_code == 413
    misspelt = post("classifier", {"text": "x"})
    assert misspelt.status_code == 422 and misspelt.json()["error"].startswith("inputs: Field required")
    info = httpx.get(app + "/info", headers=auth, timeout=30).json()["models"]
    assert info["classifier"]["labels"] == ["world", "sports", "business", "sci_tech"]
    assert info["classifier"]["max_length"] == 512 and info["ner"]["revision"].startswith("local:")
    assert (info["classifier"]["task"], info["ner"]["route"], info["embedding"]["dim"]) == (
        "text-classification",
        "/models/ner",
        384,
    )
