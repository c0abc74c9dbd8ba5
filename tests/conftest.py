"""Shared fixtures: small locally built models (real WordPiece tokenizer, random weights) and a varied corpus."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Fake credentials for the moto S3 server, set before Ray starts so its workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# An API key that the serving nodes hold in their environment (read by the replicas).
os.environ["TEST_SERVE_API_KEYS"] = "env-key-2, env-key-3"
# Job entrypoints say `python`: make that this interpreter, as an activated venv would.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

from pipeline.demo.random_models import build_random_pair  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# The slow tier: anything that starts Ray (a cluster, a Serve app, a `pipeline run` child) or
# another process (the moto S3 server, the command itself), builds ONNX models, trains the demo
# models or kills processes; those not found by fixture are marked where they are defined.
# `-m "not slow"` is the fast tier (about 30 s on 2 cores).
SLOW_FIXTURES = {"ray_cluster", "serve_base", "demo_dir", "s3_server"}


RAY_FIXTURES = {"ray_cluster", "serve_base"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # Tests without the session's Ray cluster first: once it is up, its idle processes take
    # CPU from everything else on two cores (the demo build ran 30 s slower beside it).
    items.sort(key=lambda item: bool(RAY_FIXTURES.intersection(getattr(item, "fixturenames", ()))))


def varied_corpus() -> list[str]:
    """Texts that hit the known traps: length, unicode normalisation, control chars, odd whitespace."""
    long_words = " ".join(f"Word{i} Müller-Lüdenscheidt visited Zürich and São Paulo" for i in range(40))
    return [
        "Angela Merkel met Tim Cook in Berlin.",
        "Apple Inc. opened a store on Fifth Avenue in New York City last Tuesday.",
        "",
        "   \t  \n ",
        "İstanbul is lovely; İ lowercases to two code points.",
        "The ﬁnal ﬂight of the ﬁrm was cancelled.",
        "Cafe\u0301 and café and naïve coöperation.",
        "Family: 👨‍👩‍👧‍👦 went to 🇫🇷 Paris with 👍🏽 emoji.",
        "东京和北京是城市。Tokyo and Beijing are cities. 日本語のテキスト",
        "Control\x00chars\x07here\x1b[0m and\u200bzero\u200dwidth\ufeffjoiners.",
        "Windows\r\nline\r\nendings\r\nand\ttabs.",
        "x" * 150 + " is one very long token, then Bob.",
        "Literal [SEP] and [CLS] and [UNK] tokens in text.",
        'Dr. Jean-Pierre O\'Neil (CEO of Société Générale) said: "Bonjour!"',
        long_words,
        "Short.",
        ("Barack Obama was born in Hawaii. " * 30).strip(),
        "ÅÄÖ åäö ÆØÅ ß ẞ ŉ ǅ Ǆ ﬀ ﬃ ㎏ ① Ⅻ",
        "a",
        "\u0301\u0301 leading combining marks",
    ]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return varied_corpus()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """(classifier_dir, ner_dir): 2-layer BERTs with the MiniLM uncased WordPiece tokenizer."""
    return build_random_pair(tmp_path_factory.mktemp("tiny"), hidden=64, layers=2, heads=4)


@pytest.fixture(scope="session")
def cased_ner(tmp_path_factory, tiny_models) -> Path:
    """The tiny NER model with a different (cased, accent-keeping) tokenizer: forces a second tokenization."""
    import shutil

    src = tiny_models[1]
    dst = tmp_path_factory.mktemp("cased") / "ner"
    shutil.copytree(src, dst)
    tj = json.loads((dst / "tokenizer.json").read_text())
    tj["normalizer"]["lowercase"] = False
    tj["normalizer"]["strip_accents"] = False
    (dst / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((dst / "tokenizer_config.json").read_text())
    tc["do_lower_case"] = False
    (dst / "tokenizer_config.json").write_text(json.dumps(tc))
    return dst


def tiny_config(cls: Path | None, ner: Path | None, **overrides) -> dict:
    """A config dict for the tiny models; small windows so ordinary texts span several."""
    models = {}
    if cls is not None:
        models["classifier"] = {"source": str(cls), "max_length": 32}
    if ner is not None:
        models["ner"] = {"source": str(ner), "max_length": 32, "stride": 8, "aggregation": "simple"}
    cfg = {"models": models, "runtime": {"dtype": "fp32", "batch_size": 8, "num_threads": 1}}
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        target = cfg["runtime"] if section == "runtime" else models[section]
        target[name] = value
    return cfg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint over HTTP: moto's server in a subprocess on 127.0.0.1."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def s3_client(s3_server):
    import boto3

    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")


def upload_dir(client, local: Path, bucket: str, prefix: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), bucket, f"{prefix.rstrip('/')}/{f.relative_to(local).as_posix()}")


def assert_rows_close(a: list[dict], b: list[dict], tol: float = 1e-4) -> None:
    """Same labels, spans and errors; scores equal within tol (padding changes the last bits)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["error"] == y["error"] and x["label"] == y["label"]
        if x["label_score"] is not None or y["label_score"] is not None:
            assert abs(x["label_score"] - y["label_score"]) <= tol
        if x["entities"] is None or y["entities"] is None:
            assert x["entities"] is None and y["entities"] is None
            continue
        assert [(e["label"], e["start"], e["end"], e["text"]) for e in x["entities"]] == [
            (e["label"], e["start"], e["end"], e["text"]) for e in y["entities"]
        ]
        for e, f in zip(x["entities"], y["entities"], strict=True):
            assert abs(e["score"] - f["score"]) <= tol


# The session cluster's HTTP front: Serve's proxy by default (CI), `haproxy` to run every Serve
# test behind HAProxy instead (BERT_PIPELINE_TEST_FRONT=haproxy; docs/operations.md).
TEST_FRONT = os.environ.get("BERT_PIPELINE_TEST_FRONT", "ray")
assert TEST_FRONT in ("ray", "haproxy"), f"BERT_PIPELINE_TEST_FRONT={TEST_FRONT!r}: ray or haproxy"


@pytest.fixture(scope="session")
def ray_cluster():
    """One real Ray cluster for the whole session: a head (2 CPUs, dashboard for the Jobs API)
    and a worker node that declares a GPU it does not have (GPU scheduling on a CPU machine)."""
    from types import SimpleNamespace

    import ray
    from ray.cluster_utils import Cluster

    from pipeline.cluster import CONNECT_ENV, HEAD_SYSTEM_CONFIG
    from pipeline.serve_front import local_env

    # the cluster's processes start with it, as a local instance's do (pipeline.cluster)
    os.environ.update({**CONNECT_ENV, **local_env(TEST_FRONT)})

    port = _free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
            # as cluster.yaml starts a head; a copy: Ray adds its spilling keys to the dict
            "_system_config": dict(HEAD_SYSTEM_CONFIG),
            # cluster_utils' default is 150 MiB a node: a 5 MB document's windows spilled to disk
            "object_store_memory": 1024**3,
        },
    )
    cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=512 * 1024**2)
    ray.init(address=cluster.address)
    yield SimpleNamespace(
        address=cluster.address,
        dashboard=f"http://127.0.0.1:{port}",
        session_dir=cluster.head_node.get_session_dir_path(),
    )
    ray.shutdown()
    cluster.shutdown()


def write_corpus(
    directory: Path, n_files: int, rows_per_file: int, start_id: int = 0, seed: int = 0
) -> list[int]:
    """Parquet files with an id, a text column full of traps, and pass-through columns of several types."""
    import datetime as dt
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    base = varied_corpus() + [None, "", "   "]
    words = (
        "Angela Merkel met Tim Cook in Berlin . Siemens and Apple signed a deal in Munich on Monday".split()
    )
    directory.mkdir(parents=True, exist_ok=True)
    ids = []
    next_id = start_id
    for f in range(n_files):
        texts, rows = [], []
        for _ in range(rows_per_file):
            if rng.random() < 0.3:
                texts.append(rng.choice(base))
            else:
                texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 120))))
            rows.append(next_id)
            next_id += 1
        ids += rows
        table = pa.table(
            {
                "id": pa.array(rows, pa.int64()),
                "text": pa.array(texts, pa.string()),
                "source": pa.array([f"feed-{i % 3}" for i in rows], pa.string()),
                "ts": pa.array([dt.datetime(2026, 11, 28, i % 24) for i in rows], pa.timestamp("us")),
                "tags": pa.array([[f"t{i % 5}"] * (i % 3) for i in rows], pa.list_(pa.string())),
            }
        )
        pq.write_table(table, directory / f"part-{f:03d}.parquet")
    return ids


def batch_config(
    cls: Path | None, ner: Path | None, in_path: str, out_path: str, cache: Path, **extra
) -> dict:
    cfg = tiny_config(cls, ner)
    cfg["ray"] = {"infer_actors": 1, "cpus_per_actor": 0.5, "cpus_per_task": 0.25, "docs_per_batch": 64}
    cfg["input"] = {"path": in_path}
    cfg["output"] = {"path": out_path, "min_rows_per_file": 100, "max_rows_per_file": 150}
    cfg["cache_dir"] = str(cache)
    for key, value in extra.items():
        section, _, name = key.partition("__")
        cfg.setdefault(section, {})[name] = value
    return cfg


def read_output(path: Path) -> list[dict]:
    """The published night's rows sorted by id (pyarrow skips _SUCCESS, _report.json, _staging)."""
    import pyarrow.parquet as pq

    return read_rows(pq.read_table(str(path)))


def read_rows(table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


@pytest.fixture(scope="session")
def serve_base(ray_cluster):
    """Ray Serve's HTTP proxy on 127.0.0.1 (one per session); apps are deployed under route prefixes."""
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def deploy(cfg_dict: dict, name: str, prefix: str, base: str, timeout: float = 180) -> str:
    """Deploy the app for a config and wait until /healthz answers; return its base URL. An app
    that never gets healthy is deleted: its pending replicas would hold the session cluster's
    CPUs and starve every later test."""
    from ray import serve

    from pipeline import PipelineConfig
    from pipeline.serve import build_app

    serve.run(build_app(PipelineConfig.from_dict(cfg_dict)), name=name, route_prefix=prefix, blocking=False)
    try:
        return wait_healthy(base + prefix, name, timeout)
    except BaseException:
        serve.delete(name)
        raise


@contextlib.contextmanager
def deployed(cfg_dict: dict, name: str, prefix: str, base: str) -> Iterator[str]:
    """An app for a module's tests, deleted after them: the session cluster has 3 CPUs, and each
    app left behind holds its replicas' share."""
    from ray import serve

    url = deploy(cfg_dict, name, prefix, base)
    try:
        yield url
    finally:
        serve.delete(name)


def wait_healthy(url: str, name: str, timeout: float = 180) -> str:
    """Wait until an app's /healthz answers 200; return its URL."""
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} did not become healthy")


def relabeled_model(
    src: Path, dst: Path, labels: list[str], token_level: bool, seed: int, tokenizer_from: Path | None = None
) -> Path:
    """Another tiny model like `src`: other weights, the label map `labels`, the tokenizer of
    `tokenizer_from` (default `src`), heads scaled so labels vary along a text."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(seed)
    config = BertConfig.from_pretrained(str(src))
    config.id2label = dict(enumerate(labels))
    config.label2id = {lab: i for i, lab in enumerate(labels)}
    config.num_labels = len(labels)
    model = (BertForTokenClassification if token_level else BertForSequenceClassification)(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)
    model.save_pretrained(dst, safe_serialization=True)
    tokenizer_dir = tokenizer_from or src
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, dst / name)
    return dst
