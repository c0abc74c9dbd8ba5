"""Embeddings through the batch job and over HTTP: the nightly output's column and lineage, our
/v1 routes, and OpenAI's embeddings API as the official `openai` client calls it."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import batch_config, deployed, read_output, tiny_config, write_corpus

from pipeline import Annotator, PipelineConfig, batch
from pipeline.demo.random_models import minilm_dir

pytestmark = pytest.mark.slow
KEY = "embed-key-1"


def _config(tiny_models, tmp_path) -> dict:
    cfg = tiny_config(tiny_models[0], None)
    cfg["models"]["embedding"] = {"source": str(minilm_dir())}
    cfg["cache_dir"] = str(tmp_path / "cache")
    return cfg


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_the_nightly_output_has_the_vectors_and_their_lineage(ray_cluster, tiny_models, tmp_path):
    write_corpus(tmp_path / "in", n_files=2, rows_per_file=80)
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    cfg["models"]["embedding"] = {"source": str(minilm_dir())}
    report = batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
    assert report["status"] == "complete" and report["failed_rows"] == 0
    assert set(report["per_model"]) == {"classifier", "ner", "embedding"}, "the report counts each model"
    texts = pq.read_table(tmp_path / "in", columns=["text"]).column("text")
    assert report["per_model"]["embedding"]["windows"] == len(texts) - texts.null_count, "one window a text"
    assert report["per_model"]["ner"]["windows"] > report["per_model"]["classifier"]["windows"]
    assert report["models"]["embedding"] | {"source": None, "revision": None} == {
        "source": None,
        "revision": None,
        "dim": 384,
        "pooling": "mean",
        "normalize": True,
        "max_length": 256,
    }
    files = sorted((tmp_path / "out").glob("*.parquet"))
    schema = pq.read_schema(files[0])
    assert str(schema.field("embedding").type) == "list<element: float>"
    assert json.loads(schema.metadata[b"bert_pipeline"])["models"]["embedding"]["dim"] == 384
    rows = read_output(tmp_path / "out")
    ann = Annotator(PipelineConfig.from_dict({k: cfg[k] for k in ("models", "runtime", "cache_dir")}))
    ref = ann.annotate([r["text"] for r in rows])
    for row, want in zip(rows, ref, strict=True):
        assert row["error"] == want["error"] and row["label"] == want["label"]
        if want["embedding"] is None:
            assert row["embedding"] is None
        else:
            assert len(row["embedding"]) == 384 and _cos(row["embedding"], want["embedding"]) >= 0.99999


@pytest.fixture(scope="module")
def app(serve_base, tiny_models, tmp_path_factory):
    cfg = _config(tiny_models, tmp_path_factory.mktemp("embed-app"))
    cfg["serve"] = {
        "model": {"num_cpus": 0.25},
        "ingress": {"num_cpus": 0.25},
        "api_keys": [KEY],
        "max_texts": 8,
        "max_chars": 2000,
    }
    with deployed(cfg, "embed", "/embed", serve_base) as url:
        yield url, cfg


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir()), device="cpu")


TEXTS = ["Angela Merkel met Tim Cook in Berlin.", "", "Café naïve İstanbul 東京 👍🏽", "Short."]


def test_our_routes_return_the_vectors_and_honour_the_models_subset(app, reference):
    url, _ = app
    auth = {"Authorization": f"Bearer {KEY}"}
    got = httpx.post(url + "/v1/annotate", json={"texts": TEXTS}, headers=auth, timeout=60).json()
    vectors = [r["embedding"] for r in got["results"]]
    assert _cos(vectors, reference.encode(TEXTS)).min() >= 0.99999
    assert got["results"][0]["label"] is not None and got["model"]["embedding"]["dim"] == 384
    only = httpx.post(
        url + "/v1/annotate", json={"texts": TEXTS, "models": ["embedding"]}, headers=auth, timeout=60
    )
    assert only.json()["results"][0]["label"] is None and len(only.json()["results"][0]["embedding"]) == 384
    embed = httpx.post(url + "/v1/embed", json={"texts": TEXTS}, headers=auth, timeout=60).json()
    assert set(embed["model"]) == {"embedding"} and embed["results"][1]["embedding"] is not None
    listed = httpx.get(url + "/v1/models", headers=auth, timeout=30).json()["models"]["embedding"]
    assert (listed["dim"], listed["pooling"], listed["normalize"]) == (384, "mean", True)


def test_the_openai_client_works_unchanged(app, reference):
    from openai import OpenAI

    url, _ = app
    client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    want = reference.encode(TEXTS)
    got = client.embeddings.create(model="embedding", input=TEXTS)  # the client asks for base64
    assert [d.index for d in got.data] == list(range(len(TEXTS))) and got.model == "embedding"
    assert _cos([d.embedding for d in got.data], want).min() >= 0.99999
    assert np.abs(np.array([d.embedding for d in got.data]) - want).max() <= 1e-4
    assert got.usage.prompt_tokens == got.usage.total_tokens > len(TEXTS) * 2
    floats = client.embeddings.create(model="embedding", input=TEXTS[0], encoding_format="float")
    assert len(floats.data) == 1 and np.allclose(floats.data[0].embedding, got.data[0].embedding, atol=1e-6)


def test_the_openai_route_says_what_is_wrong(app):
    import openai
    from openai import OpenAI

    url, _ = app
    client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="the embedding models are \\['embedding'\\]"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError, match="'classifier' is a classification model"):
        client.embeddings.create(model="classifier", input="x")
    with pytest.raises(openai.BadRequestError, match="384 dimensions"):
        client.embeddings.create(model="embedding", input="x", dimensions=256)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="embedding", input="x"
        )
    with pytest.raises(openai.APIStatusError) as too_many:
        client.embeddings.create(model="embedding", input=["x"] * 9)
    assert too_many.value.status_code == 413
    bad = httpx.post(
        url + "/v1/embeddings",
        json={"model": "embedding", "input": ["x", None]},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert bad.status_code == 422 and "input" in bad.json()["detail"]
