"""A new kind is one module and one registration: this test module defines a toy kind, registers
it, and runs it through `Annotator`, `pipeline run` (Ray Data workers) and `pipeline serve`
(HTTP), with no other file of the project knowing about it.

The toy kind scores a text by the sigmoid of a classifier's first logit. Ray's
`worker_process_setup_hook` registers it in every process of the job that runs it, as an
installed package's `bert_pipeline.kinds` entry point would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
import numpy as np
import pyarrow as pa
import pytest
import yaml
from conftest import _free_port, batch_config, read_output, write_corpus

from pipeline import Annotator, PipelineConfig
from pipeline.arrow_lists import flat_list, to_list_array
from pipeline.config import ModelSpec
from pipeline.kinds import KINDS, register, unregister
from pipeline.kinds.base import Kind, KindBatch, KindDecoded, KindDecoder, Listed, sigmoid

TESTS = Path(__file__).resolve().parent


class ToySpec(ModelSpec):
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    kind: Literal["toy"] = "toy"
    stride: int = 0


@dataclass
class ToyBatch(KindBatch):
    first: np.ndarray  # [N] the first logit
    valid: np.ndarray

    def doc(self, i: int) -> ToyBatch:
        return ToyBatch(self.first[i : i + 1], self.valid[i : i + 1])


class ToyDecoder(KindDecoder):
    def decode(self, texts: Sequence[object], batch: KindBatch, ok: np.ndarray) -> KindDecoded:
        assert isinstance(batch, ToyBatch)
        scores = sigmoid(batch.first)
        return Listed(
            {"score": [float(s) if k else None for s, k in zip(scores, ok & batch.valid, strict=True)]}
        )


class Toy(Kind):
    name = "toy"
    default_name = "toy"
    spec = ToySpec
    per_token = False
    endpoint = "toy"
    needs_offsets = False
    gate = ("toy_delta", 0.0)

    def first_window_only(self, spec: ModelSpec) -> bool:
        return True

    def reduce(self, logits: list[np.ndarray], spans: np.ndarray, framing: Any) -> np.ndarray:
        return logits[0][:1]

    def roles(self, spec: ModelSpec | None) -> list[tuple[str, pa.DataType]]:
        return [("score", pa.float32())]

    def default_columns(self) -> dict[str, str]:
        return {"score": "toy_score"}

    def decoder(self, lm: Any) -> ToyDecoder:
        return ToyDecoder()

    def to_columns(self, key: str, results: list[Any | None]) -> dict[str, pa.Array]:
        return {f"{key}first": to_list_array(results, pa.float32())}

    def from_columns(self, key: str, table: pa.Table, stream: Any, n_labels: int) -> ToyBatch:
        values, _, valid = flat_list(table.column(f"{key}first"))
        first = np.zeros(table.num_rows, np.float32)
        first[valid] = values
        return ToyBatch(first, valid)

    def from_results(self, results: list[Any | None], streams: list[Any], n_labels: int) -> ToyBatch:
        valid = np.array([r is not None for r in results], dtype=bool)
        return ToyBatch(np.array([r[0] if r is not None else 0.0 for r in results], np.float32), valid)

    def agreement(self, rows: list[dict], ref: list[dict], columns: dict[str, str]) -> dict[str, float]:
        col = columns["score"]
        deltas = [abs(a[col] - b[col]) for a, b in zip(rows, ref, strict=True) if a[col] is not None]
        return {"toy_delta": max(deltas, default=0.0)}

    def online_fields(self) -> dict[str, Any]:
        return {"toy_score": (float | None, None)}

    def show(self, row: dict[str, Any], columns: dict[str, str]) -> str:
        return f"{columns['score']}={row.get(columns['score'])}"


def register_toy() -> None:
    """Ray's worker_process_setup_hook (and the drivers below): make the toy kind known here."""
    if "toy" not in KINDS:
        register(Toy())


@pytest.fixture()
def toy_kind():
    register_toy()
    yield
    unregister("toy")


def _expected(classifier: Path, texts: list[str | None]) -> list[float | None]:
    """sigmoid(first logit) of the first window, computed with transformers directly."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(classifier))
    model = AutoModelForSequenceClassification.from_pretrained(str(classifier)).eval()
    out: list[float | None] = []
    for text in texts:
        if text is None:
            out.append(None)
            continue
        enc = tok(text, truncation=True, max_length=32, return_tensors="pt")
        with torch.inference_mode():
            out.append(float(torch.sigmoid(model(**enc).logits[0, 0])))
    return out


def test_a_toy_kind_runs_in_process(toy_kind, tiny_models, corpus, tmp_path):
    cfg = {
        "models": {"toy": {"source": str(tiny_models[0]), "max_length": 32}},  # the name implies the kind
        "runtime": {"dtype": "fp32", "num_threads": 1},
        "cache_dir": str(tmp_path / "cache"),
    }
    texts = [*corpus, None]
    rows = Annotator(PipelineConfig.from_dict(cfg)).annotate(texts)
    assert list(rows[0]) == ["label", "label_score", "entities", "toy_score", "error"]
    got = [r["toy_score"] for r in rows]
    want = _expected(tiny_models[0], texts)
    assert got[-1] is None and rows[-1]["error"] == "text is null"
    assert max(abs(a - b) for a, b in zip(got[:-1], want[:-1], strict=True)) <= 1e-5


def _driver(address: str, args: list[str]) -> list[str]:
    """A Python command: a Ray driver whose job registers the toy kind in every worker process,
    then runs `pipeline <args>`."""
    runtime_env = {
        "worker_process_setup_hook": "test_kind_contract.register_toy",
        "env_vars": {"PYTHONPATH": str(TESTS)},
    }
    code = (
        "import sys, ray\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from test_kind_contract import register_toy\n"
        "register_toy()\n"
        f"ray.init(address={address!r}, runtime_env={runtime_env!r})\n"
        "from pipeline.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return [sys.executable, "-c", code, *args]


@pytest.mark.slow
def test_a_toy_kind_runs_in_pipeline_run(ray_cluster, tiny_models, tmp_path):
    ids = write_corpus(tmp_path / "in", n_files=2, rows_per_file=60)
    cfg = batch_config(None, None, str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "cache")
    cfg["models"] = {"scorer": {"kind": "toy", "source": str(tiny_models[0]), "max_length": 32}}
    path = tmp_path / "night.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        _driver(ray_cluster.address, ["run", str(path), "--show", "2"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scorer_score=" in done.stdout, "--show prints the toy kind's own way"
    rows = read_output(tmp_path / "out")
    assert [r["id"] for r in rows] == sorted(ids) and "scorer_score" in rows[0]
    want = _expected(tiny_models[0], [r["text"] for r in rows])
    for row, score in zip(rows, want, strict=True):
        assert (row["scorer_score"] is None) == (score is None)
        if score is not None:
            assert abs(row["scorer_score"] - score) <= 1e-5
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["status"] == "complete" and report["models"]["scorer"]["revision"].startswith("local:")


@pytest.mark.slow
def test_a_toy_kind_runs_in_pipeline_serve(tiny_models, tmp_path):
    port = _free_port()
    cfg = {
        "models": {
            "toy": {"source": str(tiny_models[0]), "max_length": 32},
            "classifier": {"source": str(tiny_models[0])},
        },
        "runtime": {"dtype": "fp32", "num_threads": 1},
        "serve": {"port": port, "model": {"num_cpus": 0.25}, "ingress": {"num_cpus": 0.25}},
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    server = subprocess.Popen(
        _driver("local", ["serve", str(path)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.time() < deadline, "pipeline serve did not come up"
            time.sleep(0.5)
        texts = ["Angela Merkel met Tim Cook in Berlin.", "Short."]
        want = _expected(tiny_models[0], texts)
        every = httpx.post(url + "/v1/annotate", json={"texts": texts}, timeout=60).json()
        assert [abs(r["toy_score"] - w) <= 1e-5 for r, w in zip(every["results"], want, strict=True)] == [
            True,
            True,
        ]
        assert every["results"][0]["label"] is not None
        only = httpx.post(url + "/v1/toy", json={"texts": texts}, timeout=60).json()
        assert set(only["model"]) == {"toy"} and only["results"][0]["label"] is None
        assert only["results"][1]["toy_score"] is not None
        assert "/v1/toy" in httpx.get(url + "/openapi.json", timeout=30).json()["paths"]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
