"""The online API over real HTTP on Ray Serve: parity, bad input, auth, concurrency, overload, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time

import httpx
import pytest
from conftest import TEST_FRONT, assert_rows_close, batch_config, deployed, read_output, tiny_config

from pipeline import Annotator, PipelineConfig, batch


def serve_config(tiny_models, **serve) -> dict:
    cfg = tiny_config(*tiny_models)
    cfg["serve"] = {
        "model": {"num_cpus": 0.25, "max_ongoing_requests": 64},
        "ingress": {"num_cpus": 0.25},
        "max_texts": 16,
        "max_chars": 5000,
        "max_body_bytes": 200_000,
        **serve,
    }
    return cfg


@pytest.fixture(scope="module")
def app(serve_base, tiny_models):
    cfg = serve_config(tiny_models, batch_wait_timeout_s=0.05)
    with deployed(cfg, "main", "/main", serve_base) as url:
        yield url, cfg


@pytest.fixture(scope="module")
def reference(tiny_models):
    return Annotator(PipelineConfig.from_dict(tiny_config(*tiny_models)))


def post(url: str, path: str, body, **kw) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(url + path, json=body, timeout=60, **kw)
    return httpx.post(
        url + path, content=body, headers={"content-type": "application/json"}, timeout=60, **kw
    )


def test_http_answers_equal_annotator_and_batch_output(app, reference, tiny_models, corpus, tmp_path):
    url, _ = app
    texts = [t for t in corpus if len(t) <= 5000][:15] + [None]
    errors_before = httpx.get(url + "/v1/stats").json()["ingress"]["item_errors"]
    got = post(url, "/v1/annotate", {"texts": texts})
    assert got.status_code == 200, got.text
    rows = got.json()["results"]
    assert_rows_close(rows, reference.annotate(texts))
    assert rows[-1]["error"] == "text is null"
    errors_after = httpx.get(url + "/v1/stats").json()["ingress"]["item_errors"]
    assert errors_after.get("input", 0) == errors_before.get("input", 0) + 1, (
        "per-item errors counted by kind"
    )
    assert set(got.json()["model"]) == {"classifier", "ner"}

    # the nightly job gives the same rows for the same texts
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), tmp_path / "in" / "a.parquet")
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
    assert_rows_close(rows, read_output(tmp_path / "out"))

    # runtime.backend: serve -- the nightly job borrows this app's Model deployment: same rows
    served_before = httpx.get(url + "/v1/stats").json()["engine"]["sequences"]
    borrowed = batch_config(
        *tiny_models,
        str(tmp_path / "in"),
        str(tmp_path / "out-serve"),
        tmp_path / "cache",
        runtime__backend="serve",
        serve__app_name="main",
    )
    report = batch.run(PipelineConfig.from_dict(borrowed), echo=lambda s: None)
    assert_rows_close(rows, read_output(tmp_path / "out-serve"))
    served_after = httpx.get(url + "/v1/stats").json()["engine"]["sequences"]
    # the Serve replica did the work (health-check probes add a few windows of their own)
    assert 0 < report["windows"] <= served_after - served_before


def test_batch_job_refuses_a_serve_app_that_is_missing_or_holds_other_models(app, tiny_models, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import ConfigError

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [1], "text": ["x"]}), tmp_path / "in" / "a.parquet")
    cls, ner = tiny_models
    for app_name, models, message in [
        ("no-such-app", (cls, ner), "needs the Serve app 'no-such-app' running"),
        ("main", (ner, ner), "the Serve app 'main' serves classifier"),  # another model's revision
    ]:
        cfg = batch_config(
            *models,
            str(tmp_path / "in"),
            str(tmp_path / app_name),
            tmp_path / "cache",
            runtime__backend="serve",
            serve__app_name=app_name,
        )
        with pytest.raises(ConfigError, match=message):
            batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
        assert not (tmp_path / app_name / "_staging").exists(), "refused before any work"


def test_classify_and_ner_endpoints(app, reference):
    url, _ = app
    text = "Angela Merkel met Tim Cook in Berlin."
    (full,) = reference.annotate([text])
    (cls,) = post(url, "/v1/classify", {"texts": [text]}).json()["results"]
    (ner,) = post(url, "/v1/ner", {"texts": [text]}).json()["results"]
    assert cls["label"] == full["label"] and cls["entities"] is None
    assert ner["label"] is None and [e["text"] for e in ner["entities"]] == [
        e["text"] for e in full["entities"]
    ]


def test_models_health_and_openapi(app):
    url, cfg = app
    models = httpx.get(url + "/v1/models").json()
    assert models["models"]["ner"]["labels"][0] == "O"
    assert models["config_hash"] == PipelineConfig.from_dict(cfg).config_hash()
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    spec = httpx.get(url + "/openapi.json").json()
    assert {"/v1/annotate", "/v1/classify", "/v1/ner", "/v1/models", "/healthz"} <= set(spec["paths"])
    assert httpx.get(url + "/docs").status_code == 200


@pytest.mark.parametrize(
    "body, status, words",
    [
        ("{not json", 400, "not valid JSON"),
        ('{"texts": "one string"}', 422, "texts"),
        ('{"texts": [1, 2]}', 422, "texts.0"),
        ('{"texts": []}', 422, "at least 1"),
        ('{"text": ["typo"]}', 422, "texts"),
        ("[]", 422, "body"),
        ('{"texts": [' + ",".join(['"x"'] * 17) + "]}", 413, "serve.max_texts"),
        ('{"texts": ["' + "y" * 5001 + '"]}', 413, "serve.max_chars"),
        ('{"texts": ["' + "z" * 210_000 + '"]}', 413, "serve.max_body_bytes"),
    ],
)
def test_bad_requests_get_clear_4xx_and_the_replica_lives(app, body, status, words):
    url, _ = app
    r = post(url, "/v1/annotate", body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert post(url, "/v1/annotate", {"texts": ["still alive"]}).status_code == 200


def test_64_concurrent_clients_get_correct_answers_in_shared_batches(app, reference):
    url, _ = app
    texts = [f"Client {i} says Angela Merkel met Tim Cook in Berlin on day {i}." for i in range(64)]
    expected = reference.annotate(texts)
    before = httpx.get(url + "/v1/stats").json()["batch_sizes"]

    async def client(c: httpx.AsyncClient, i: int):
        results = []
        for _ in range(3):
            r = await c.post(url + "/v1/annotate", json={"texts": [texts[i]]}, timeout=120)
            results.append(r)
        return results

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits) as c:
            return await asyncio.gather(*(client(c, i) for i in range(64)))

    started = time.time()
    responses = asyncio.run(main())
    assert time.time() - started < 120
    for i, rs in enumerate(responses):
        for r in rs:
            assert r.status_code == 200, r.text
            assert_rows_close(r.json()["results"], [expected[i]])
    after = httpx.get(url + "/v1/stats").json()["batch_sizes"]
    new = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    assert sum(k * v for k, v in new.items()) == 64 * 3
    assert max(new) > 1, f"dynamic batching never merged requests: {new}"


@pytest.fixture(scope="module")
def guarded(serve_base, tiny_models):
    """An app with API keys, a slow batch wait and tiny queues: for auth and overload."""
    cfg = serve_config(
        tiny_models,
        api_keys=["secret-key-1"],
        api_keys_env="TEST_SERVE_API_KEYS",  # set in conftest before the cluster started
        batch_wait_timeout_s=0.3,
        max_batch_size=64,
        model={"num_cpus": 0.25, "max_ongoing_requests": 2, "max_queued_requests": 2},
        ingress={"num_cpus": 0.25, "max_ongoing_requests": 4, "max_queued_requests": 4},
        retry_after_s=2,
    )
    with deployed(cfg, "guarded", "/guarded", serve_base) as url:
        yield url


def test_api_key_required_when_configured(guarded):
    body = {"texts": ["hello"]}
    assert post(guarded, "/v1/annotate", body).status_code == 401
    assert post(guarded, "/v1/annotate", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        post(guarded, "/v1/annotate", body, headers={"Authorization": "Bearer secret-key-1"}).status_code
        == 200
    )
    assert (
        post(guarded, "/v1/annotate", body, headers={"Authorization": "Bearer env-key-2"}).status_code == 200
    )
    assert httpx.get(guarded + "/v1/models").status_code == 401
    assert httpx.get(guarded + "/healthz").status_code == 200


def test_overload_gets_503_with_retry_after_quickly_then_recovers(guarded):
    headers = {"Authorization": "Bearer secret-key-1"}

    async def one(c: httpx.AsyncClient):
        t = time.time()
        r = await c.post(guarded + "/v1/annotate", json={"texts": ["busy"]}, headers=headers, timeout=60)
        return r, time.time() - t

    async def main():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as c:
            return await asyncio.gather(*(one(c) for _ in range(60)))

    results = asyncio.run(main())
    codes = [r.status_code for r, _ in results]
    rejected = [(r, dt) for r, dt in results if r.status_code == 503]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1 and len(rejected) >= 10, codes
    assert all(r.headers.get("retry-after") == "2" for r, _ in rejected)
    assert min(dt for _, dt in rejected) < 2.0, "rejections must be fast, not after a long wait"
    time.sleep(1)
    assert post(guarded, "/v1/annotate", {"texts": ["calm again"]}, headers=headers).status_code == 200


def test_batch_job_waits_out_a_full_model_deployment_and_loses_nothing(guarded, tiny_models, caplog):
    """runtime.backend: serve against a Model deployment with a queue of 2: the job's chunks get
    Serve's BackPressureError, wait retry_after_s and are sent again; every row comes back."""
    import pyarrow as pa

    from pipeline.infer_stage import ServeInfer
    from pipeline.stages import decode_batch, encode_batch

    cfg = tiny_config(*tiny_models)
    cfg["serve"] = {"app_name": "guarded", "max_batch_size": 2, "retry_after_s": 1}
    conf = PipelineConfig.from_dict(cfg).for_workers()
    texts = [f"Angela Merkel met Tim Cook in Berlin on day {i}." for i in range(40)]
    table = encode_batch(pa.table({"id": list(range(40)), "text": texts}), config=conf, text_column="text")
    with caplog.at_level("INFO", logger="pipeline.infer_stage"):
        inferred = ServeInfer(conf)(table)  # 20 chunks at once against 2 running + 2 queued
    retries = [r for r in caplog.records if "deployment is full" in r.getMessage()]
    assert retries, "the deployment never pushed back: the test did not test backpressure"
    rows = decode_batch(inferred, config=conf, text_column="text").to_pylist()
    want = Annotator(PipelineConfig.from_dict(cfg)).annotate(texts)
    assert [r["id"] for r in rows] == list(range(40))
    assert_rows_close(rows, want)


def test_killed_model_replica_is_replaced(app):
    from ray.util.state import list_actors

    url, _ = app
    (victim,) = [
        a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.class_name == "ServeReplica:main:Model"
    ]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.time() + 180
    ok = False
    while time.time() < deadline and not ok:
        with contextlib.suppress(httpx.HTTPError):
            ok = post(url, "/v1/annotate", {"texts": ["back again"]}).status_code == 200
        time.sleep(1)
    assert ok, "the service did not recover after its model replica was killed"
    alive = [
        a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.class_name == "ServeReplica:main:Model"
    ]
    assert alive and alive[0].pid != victim.pid


def test_single_layout_serves_from_one_replica_on_ort_and_equals_the_annotator(
    serve_base, tiny_models, reference, tmp_path
):
    """serve.layout single: HTTP, encode, model and decode in one replica (no handle hop), here
    on the onnxruntime engine: the same answers as the torch Annotator, shared batches, keys on."""
    from ray import serve

    cfg = serve_config(tiny_models, layout="single", batch_wait_timeout_s=0.05, api_keys=["single-key"])
    cfg["runtime"]["engine"] = "onnxruntime"
    cfg["cache_dir"] = str(tmp_path)
    texts = [f"Client {i} says Angela Merkel met Tim Cook in Berlin on day {i}." for i in range(16)]
    expected = reference.annotate(texts)
    key = {"Authorization": "Bearer single-key"}
    with deployed(cfg, "single", "/single", serve_base) as url:
        assert serve.status().applications["single"].deployments.keys() == {"Ingress"}
        assert post(url, "/v1/annotate", {"texts": texts[:1]}).status_code == 401

        async def client(c: httpx.AsyncClient, i: int):
            return [
                await c.post(url + "/v1/annotate", json={"texts": [texts[i]]}, headers=key) for _ in range(3)
            ]

        async def main():
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*(client(c, i) for i in range(16)))

        for i, responses in enumerate(asyncio.run(main())):
            for r in responses:
                assert r.status_code == 200, r.text
                assert_rows_close(r.json()["results"], [expected[i]])
        stats = httpx.get(url + "/v1/stats", headers=key).json()
        assert stats["device"] == "cpu ort-fp32"
        assert sum(int(k) * v for k, v in stats["batch_sizes"].items() if k != "1") > 0, stats["batch_sizes"]
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        models = httpx.get(url + "/v1/models", headers=key).json()
        assert set(models["serving"]) == {"classifier", "ner"}


def test_a_config_asking_for_the_front_the_cluster_does_not_run_is_refused(serve_base):
    """A config asking for the front the session cluster's Serve does not run is told how to
    get it, instead of being served quietly through the other one."""
    from pipeline.config import ConfigError
    from pipeline.serve_front import check

    ours, other = TEST_FRONT, {"ray": "haproxy", "haproxy": "ray"}[TEST_FRONT]
    assert check(None) == ours and check(ours) == ours
    how = {
        "haproxy": "RAY_SERVE_ENABLE_HA_PROXY=1 in the environment of `ray start`",
        "ray": "unset it there",
    }
    with pytest.raises(ConfigError, match=re.escape(how[other])):
        check(other)
