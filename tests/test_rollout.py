"""Model rollouts without wrong answers: every answer names the revision that produced it and
carries that revision's labels, online during a rolling update and in a night's output.

Two revisions of the same two models whose label maps differ in order and count: any label
decoded with the other revision's map shows up as a wrong label or a label that revision
does not have.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_rows_close, deploy, relabeled_model, tiny_config, wait_healthy

from pipeline import Annotator, PipelineConfig, batch
from pipeline.config import ConfigError
from pipeline.publish import SUCCESS, OutputError
from pipeline.revisions import ModelChanged

V2_TOPICS = ["v2-sci_tech", "v2-world", "v2-other", "v2-business", "v2-sports"]  # reordered, one more
V2_NER = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER", "B-V2", "I-V2"]  # reordered, fewer


@pytest.fixture(scope="module")
def v2_models(tmp_path_factory, tiny_models) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("v2")
    return (
        relabeled_model(tiny_models[0], root / "classifier", V2_TOPICS, False, 11),
        relabeled_model(tiny_models[1], root / "ner", V2_NER, True, 12),
    )


def _app_config(models: tuple[Path, Path], **serve) -> dict:
    cfg = tiny_config(*models)
    cfg["serve"] = {
        "model": {"num_cpus": 0.25, "max_ongoing_requests": 64},
        "ingress": {"num_cpus": 0.25},
        "batch_wait_timeout_s": 0.01,
        **serve,
    }
    return cfg


TEXTS = [
    "Angela Merkel met Tim Cook in Berlin.",
    "Siemens and Apple signed a deal in Munich on Monday.",
    "Barack Obama was born in Hawaii.",
    "Tokyo and Beijing are cities.",
    "Dr. Jean-Pierre O'Neil (CEO of Société Générale) said hello.",
    "Short.",
    "The striker scored twice as Real Madrid beat Barcelona in the final.",
    "Priya Raman left Nvidia and moved back to Mumbai.",
]


@pytest.fixture(scope="module")
def references(tiny_models, v2_models) -> dict[str, list[dict]]:
    """{revision of the classifier: the rows that revision gives for TEXTS} for both revisions."""
    out = {}
    for models in (tiny_models, v2_models):
        ann = Annotator(PipelineConfig.from_dict(tiny_config(*models)))
        out[ann.models["classifier"].revision] = ann.annotate(TEXTS)
    return out


def _answer_matches(response: dict, text_index: int, references: dict) -> bool:
    """The answer equals what the revision it names gives for this text (labels, spans, scores)."""
    (row,) = response["results"]
    want = references.get(response["model"]["classifier"]["revision"])
    if want is None:
        return False
    try:
        assert_rows_close([row], [want[text_index]])
    except AssertionError:
        return False
    return True


def test_ingress_of_one_revision_with_a_model_of_another_answers_with_the_models_labels(
    serve_base, tiny_models, v2_models, references
):
    """The skew a rolling update creates, held still: an Ingress built for v1 in front of a
    Model deployment that runs v2. Every answer is v2's, whole, and says so."""
    from ray import serve

    from pipeline.config import MODEL_DEPLOYMENT
    from pipeline.serve import Ingress, Model, deployment_options

    v1 = PipelineConfig.from_dict(_app_config(tiny_models))
    v2 = PipelineConfig.from_dict(_app_config(v2_models))
    model = serve.deployment(Model, name=MODEL_DEPLOYMENT, **deployment_options(v2.serve.model, v2)).bind(
        v2.for_workers()
    )
    app = serve.deployment(Ingress, name="Ingress", **deployment_options(v1.serve.ingress, v1)).bind(
        model, v1.for_workers()
    )
    serve.run(app, name="skewed", route_prefix="/skewed", blocking=False)
    try:
        url = wait_healthy(serve_base + "/skewed", "skewed")
        v2_revision = (
            Annotator(PipelineConfig.from_dict(tiny_config(*v2_models))).models["classifier"].revision
        )
        for i, text in enumerate(TEXTS):
            r = httpx.post(url + "/v1/annotate", json={"texts": [text]}, timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"]["classifier"]["revision"] == v2_revision
            assert body["model"]["classifier"]["labels"] == V2_TOPICS
            assert body["results"][0]["label"] in V2_TOPICS
            assert _answer_matches(body, i, references), (text, body)
        (ner_only,) = httpx.post(url + "/v1/ner", json={"texts": [TEXTS[0]]}).json()["results"]
        assert {e["label"] for e in ner_only["entities"]} <= {"LOC", "PER", "V2"}
        serving = httpx.get(url + "/v1/models").json()["serving"]
        assert v2_revision in serving["classifier"]
    finally:
        serve.delete("skewed")


def test_rollout_under_load_loses_nothing_and_no_answer_mixes_revisions(
    serve_base, tiny_models, v2_models, references
):
    """16 clients send single texts while the app is redeployed (same name) to v2."""
    from ray import serve

    from pipeline.serve import build_app

    url = deploy(_app_config(tiny_models), "rolling", "/rolling", serve_base)
    v1_revision, v2_revision = list(references)
    records: list[tuple[float, float, int, bool, str | None]] = []  # start, latency, status, ok, revision
    stop = threading.Event()
    rollout: dict[str, float] = {}

    async def client(c: httpx.AsyncClient, k: int) -> None:
        i = k
        while not stop.is_set():
            i = (i + 1) % len(TEXTS)
            t0 = time.time()
            try:
                r = await c.post(url + "/v1/annotate", json={"texts": [TEXTS[i]]}, timeout=60)
                status, body = r.status_code, (r.json() if r.status_code == 200 else None)
            except httpx.HTTPError:
                status, body = 0, None
            revision = body["model"]["classifier"]["revision"] if body else None
            ok = body is not None and _answer_matches(body, i, references)
            records.append((t0, time.time() - t0, status, ok, revision))

    async def load() -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as c:
            await asyncio.gather(*(client(c, k) for k in range(16)))

    loader = threading.Thread(target=lambda: asyncio.run(load()), daemon=True)
    loader.start()
    try:
        time.sleep(2)
        rollout["start"] = time.time()
        serve.run(
            build_app(PipelineConfig.from_dict(_app_config(v2_models))),
            name="rolling",
            route_prefix="/rolling",
            blocking=False,
        )
        deadline = time.time() + 90
        while time.time() < deadline:  # done when only v2 has answered for 3 s
            recent = [r for r in records[-200:] if r[0] > time.time() - 3]
            if time.time() - rollout["start"] > 2 and recent and all(r[4] == v2_revision for r in recent):
                break
            time.sleep(0.5)
        rollout["end"] = time.time()
        time.sleep(1.5)
    finally:
        stop.set()
        loader.join(timeout=90)
        serve.delete("rolling")

    def phase(lo: float, hi: float) -> list:
        return [r for r in records if lo <= r[0] < hi]

    phases = {
        "before": phase(0, rollout["start"]),
        "during": phase(rollout["start"], rollout["end"]),
        "after": phase(rollout["end"], float("inf")),
    }
    for name, rows in phases.items():
        lat = sorted(r[1] for r in rows) or [0.0]
        print(
            f"rollout {name}: {len(rows)} requests, {sum(r[2] != 200 for r in rows)} failed, "
            f"p50 {lat[len(lat) // 2] * 1000:.0f} ms, p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.0f} ms, "
            f"revisions {sorted({str(r[4])[:20] for r in rows})}"
        )
    failed = [r for r in records if r[2] != 200]
    wrong = [r for r in records if r[2] == 200 and not r[3]]
    print(
        f"rollout total: {len(records)} requests, {len(failed)} failed, {len(wrong)} wrong, "
        f"{rollout['end'] - rollout['start']:.1f} s"
    )
    assert not failed, f"{len(failed)} of {len(records)} requests failed: {failed[:3]}"
    assert not wrong, f"{len(wrong)} answers disagree with the revision they name: {wrong[:3]}"
    assert {r[4] for r in phases["before"]} == {v1_revision}
    assert {r[4] for r in records[-20:]} == {v2_revision}, "the rollout finished on v2"
    assert len(phases["during"]) >= 16


def _wait_until_served(job: PipelineConfig, timeout: float = 120) -> None:
    """Until the app answers with the revisions the job's sources hold now, three times running."""
    from pipeline.infer_stage import check_served_models
    from pipeline.models import model_revisions

    want, streak, deadline = model_revisions(job), 0, time.time() + timeout
    while streak < 3:
        try:
            check_served_models(job, want)
            streak += 1
        except ConfigError:
            streak = 0
            assert time.time() < deadline, "the app never settled on the new revision"
        time.sleep(0.5)


def test_a_night_on_the_serve_backend_stops_when_the_app_changes_revision(
    serve_base, tiny_models, v2_models, tmp_path
):
    """The app and the job both name `current/`; mid-night v2 is copied over it and the app is
    redeployed. The night fails by name and publishes nothing, will not resume into a mix of
    v1 and v2 rows, and reruns cleanly with --overwrite, all of it v2."""
    from ray import serve

    from pipeline.serve import build_app

    current = tmp_path / "current"
    shutil.copytree(tiny_models[0], current / "classifier")
    shutil.copytree(tiny_models[1], current / "ner")
    models = (current / "classifier", current / "ner")
    deploy(_app_config(models, max_batch_size=4), "nightly", "/nightly", serve_base)
    src = tmp_path / "in"
    src.mkdir()
    n = 1200
    words = "Angela Merkel met Tim Cook in Berlin and Siemens signed a deal in Munich".split()
    texts = [" ".join(words[: 3 + i % 10]) for i in range(n)]
    for f in range(4):
        lo, hi = f * n // 4, (f + 1) * n // 4
        pq.write_table(pa.table({"id": list(range(lo, hi)), "text": texts[lo:hi]}), src / f"part-{f}.parquet")
    out = tmp_path / "out"
    cfg = tiny_config(*models)
    cfg.update(
        ray={"infer_actors": 1, "cpus_per_task": 0.25, "docs_per_batch": 64},
        input={"path": str(src)},
        output={"path": str(out), "min_rows_per_file": 500, "max_rows_per_file": 1000},
        cache_dir=str(tmp_path / "cache"),
        runtime={**cfg["runtime"], "backend": "serve"},
        serve={"app_name": "nightly", "max_batch_size": 4},
    )
    job = PipelineConfig.from_dict(cfg)
    outcome: dict[str, object] = {}

    def night() -> None:
        try:
            outcome["report"] = batch.run(job, echo=lambda s: None)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc

    runner = threading.Thread(target=night, daemon=True)
    runner.start()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "_staging" / "run.json").exists():
            time.sleep(0.1)  # until the night has started, its lineage naming v1
        assert runner.is_alive(), f"the night ended before the redeploy: {outcome}"
        # v2 takes current/'s place by a rename, as a deploy script should: the running replicas
        # memory-map their weights, and overwriting those files in place crashes them (SIGBUS)
        shutil.copytree(v2_models[0], tmp_path / "next" / "classifier")
        shutil.copytree(v2_models[1], tmp_path / "next" / "ner")
        current.rename(tmp_path / "previous")
        (tmp_path / "next").rename(current)
        # a changed deployment config makes Serve replace the replicas; they load v2 from current/
        rolled = _app_config(models, max_batch_size=4, batch_wait_timeout_s=0.011)
        serve.run(
            build_app(PipelineConfig.from_dict(rolled)),
            name="nightly",
            route_prefix="/nightly",
            blocking=False,
        )
        runner.join(timeout=300)
        error = outcome.get("error")
        assert isinstance(error, ModelChanged), outcome
        assert "model changed from local:" in str(error) and "Rerun with --overwrite" in str(error)
        assert not (out / SUCCESS).exists() and not list(out.glob("*.parquet")), "nothing published"

        _wait_until_served(job)
        with pytest.raises(OutputError, match="resuming would mix two revisions"):
            batch.run(job, echo=lambda s: None)
        faster = job.model_copy(update={"serve": job.serve.model_copy(update={"max_batch_size": 64})})
        report = batch.run(faster, overwrite=True, echo=lambda s: None)
    finally:
        serve.delete("nightly")
    assert report["documents"] == n and report["output_rows"] == n
    revisions = set()
    for path in out.glob("*.parquet"):
        revisions.add(json.dumps(json.loads(pq.read_schema(path).metadata[b"bert_pipeline"])["models"]))
        assert set(pq.read_table(path, columns=["label"]).column("label").to_pylist()) <= set(V2_TOPICS)
    assert len(revisions) == 1
