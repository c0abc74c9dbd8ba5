"""Hostile input at scale, in batch and online: every id gets a result or its own error, no
worker or replica dies, and the server never answers 5xx."""

from __future__ import annotations

import asyncio
import random

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_rows_close, batch_config, deployed, read_rows, tiny_config
from hostile import INVALID_UTF8, fuzz_bodies, hostile_texts, invalid_utf8_column

from pipeline import Annotator, PipelineConfig, batch

pytestmark = pytest.mark.slow


def test_a_hostile_corpus_runs_to_the_end_with_a_result_or_an_error_per_id(
    ray_cluster, tiny_models, tmp_path
):
    hostile = hostile_texts(random.Random(11))
    names, texts = list(hostile), list(hostile.values())
    n = len(texts) + len(INVALID_UTF8)
    (tmp_path / "in").mkdir()
    table = pa.table({"id": pa.array(range(n), pa.int64()), "text": invalid_utf8_column(texts, INVALID_UTF8)})
    pq.write_table(table, tmp_path / "in" / "hostile.parquet")
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    cfg["models"]["ner"].update(max_length=128, stride=16)  # 5 MB in fewer windows: CI time
    cfg["ray"]["docs_per_batch"] = 4

    report = batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
    assert report["status"] == "complete" and report["output_rows"] == n
    assert report["failed_rows"] == 0, report["top_errors"]
    assert report["input_errors"] == len(INVALID_UTF8)

    # the text column passes through as it came, invalid bytes included: read the rest
    rows = read_rows(
        pq.read_table(tmp_path / "out", columns=["id", "label", "label_score", "entities", "error"])
    )
    assert [r["id"] for r in rows] == list(range(n)), "every id exactly once"
    for row, name, text in zip(rows, names, texts, strict=False):
        assert row["error"] is None, (name, row["error"])
        assert row["label"] is not None and isinstance(row["entities"], list), name
        assert all(text[e["start"] : e["end"]] == e["text"] for e in row["entities"]), name
    for row in rows[len(texts) :]:
        assert row["error"].startswith("text is not valid UTF-8") and row["label"] is None

    # the same answers as in-process, for all but the 5 MB text (CI time)
    ann = Annotator(PipelineConfig.from_dict({k: v for k, v in cfg.items() if k in ("models", "runtime")}))
    small = [i for i, name in enumerate(names) if name != "big"]
    assert_rows_close([rows[i] for i in small], ann.annotate([texts[i] for i in small]))


# -- online: a seeded fuzz of every route that takes a body ------------------------------------
ROUTES = ("/v1/annotate", "/v1/classify", "/v1/ner", "/models/ner", "/v1/embeddings")


@pytest.fixture(scope="module")
def fuzzed_app(serve_base, tiny_models):
    cfg = tiny_config(*tiny_models)
    cfg["serve"] = {
        "model": {"num_cpus": 0.25},
        "ingress": {"num_cpus": 0.25},
        "max_texts": 16,
        "max_chars": 5000,
        "max_body_bytes": 200_000,
    }
    with deployed(cfg, "fuzz", "/fuzz", serve_base) as url:
        yield url


async def _send_all(url: str, bodies: list[bytes], concurrency: int = 8) -> list[tuple[int, bytes, str]]:
    limits = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(route: str, body: bytes) -> tuple[int, bytes, str]:
            async with limits:
                got = await client.post(
                    url + route, content=body, headers={"content-type": "application/json"}
                )
                return got.status_code, body, route

        return await asyncio.gather(*[one(route, b) for route in ROUTES for b in bodies])


def test_four_hundred_random_or_mutated_bodies_per_route_never_get_a_5xx(fuzzed_app, tiny_models):
    url = fuzzed_app
    probe = {"texts": ["Angela Merkel met Tim Cook in Berlin."]}
    before = httpx.post(url + "/v1/annotate", json=probe, timeout=60).json()
    sequences = httpx.get(url + "/v1/stats", timeout=30).json()["engine"]["sequences"]

    answers = asyncio.run(_send_all(url, fuzz_bodies(random.Random(5), 400)))
    statuses = sorted({status for status, _, _ in answers})
    server_errors = [(status, route, body[:200]) for status, body, route in answers if status >= 500]
    assert not server_errors, sorted({(s, b[:70]) for s, _, b in server_errors})[:40]
    assert set(statuses) <= {200, 400, 404, 413, 422}, statuses
    assert 200 in statuses and 422 in statuses and 400 in statuses, (
        "the fuzz reached the model and the checks"
    )

    # the same replicas answer a normal request, as before
    assert httpx.get(url + "/healthz", timeout=30).status_code == 200
    after = httpx.post(url + "/v1/annotate", json=probe, timeout=60).json()
    assert after["results"] == before["results"]
    assert httpx.get(url + "/v1/stats", timeout=30).json()["engine"]["sequences"] > sequences, (
        "counters kept growing: no replica was restarted"
    )
