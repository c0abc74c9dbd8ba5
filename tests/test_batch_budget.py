"""Token-budget batching and out-of-memory safety: a batch never passes runtime.max_batch_tokens,
and a batch that runs out of memory is split and retried, so no row gets an error for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from pipeline import Annotator, PipelineConfig
from pipeline.infer import ModelRunner


@pytest.mark.parametrize("device", ["cpu", "cuda-like"])
def test_no_batch_passes_the_token_budget(device):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([np.full(20, 512), rng.integers(5, 120, 300), rng.integers(200, 512, 30)])
    runner = ModelRunner(
        torch.nn.Linear(2, 2), batch_size=64, pad_id=0, pad_multiple=8, max_length=512, max_batch_tokens=4096
    )
    if device == "cuda-like":
        runner.device = torch.device("cuda")  # planning only: no tensor goes anywhere
    order = np.argsort(-lengths, kind="stable")
    batches = runner.plan(lengths[order], order)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 64 and len(b) * runner.padded_length(int(lengths[b].max())) <= 4096
    assert max(len(b) for b in batches) > 8  # short sequences still fill big batches
    one = ModelRunner(
        torch.nn.Linear(2, 2), batch_size=64, pad_id=0, pad_multiple=8, max_length=512, max_batch_tokens=100
    )
    assert [len(b) for b in one.plan(np.array([512, 512]), np.array([0, 1]))] == [1, 1]  # too long: alone


class RunsOutOfMemory(torch.nn.Module):
    """A real model behind a fake memory limit: raises CUDA's OutOfMemoryError above `limit` tokens."""

    def __init__(self, model: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.attempts = model, limit, []

    def forward(self, input_ids, attention_mask):
        self.attempts.append(input_ids.numel())
        if input_ids.numel() > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_out_of_memory_splits_the_batch_and_loses_no_row(tiny_models, corpus, caplog):
    cfg = PipelineConfig.from_dict(tiny_config(*tiny_models, runtime__batch_size=64))
    ref = Annotator(cfg)
    texts = corpus * 6
    want = ref.annotate(texts)

    ann = Annotator(cfg)
    wrapped = {}
    for task, runner in ann.engine.runners.items():
        runner.model = wrapped[task] = RunsOutOfMemory(runner.model, limit=300)
    with caplog.at_level("WARNING", logger="pipeline.infer"):
        got = ann.annotate(texts)

    assert [r["error"] for r in got] == [r["error"] for r in want]  # no row turned into an error
    assert [r["label"] for r in got] == [r["label"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert (g["label_score"] is None) == (w["label_score"] is None)
        if g["label_score"] is not None:
            assert abs(g["label_score"] - w["label_score"]) < 1e-4
        assert [(e["label"], e["start"], e["end"]) for e in g["entities"] or []] == [
            (e["label"], e["start"], e["end"]) for e in w["entities"] or []
        ]
    stats = ann.stats().as_dict()
    assert stats["oom_splits"] > 0
    for task, model in wrapped.items():
        runner = ann.engine.runners[task]
        assert runner.max_batch_tokens <= 300 * 2  # learned: later batches start under the limit
        late = model.attempts[len(model.attempts) // 2 :]
        assert not [n for n in late if n > 300], (task, model.attempts)  # no more failed attempts
    warnings = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert 1 <= len(warnings) <= len(wrapped)  # once per runner, not once per batch


def test_one_sequence_that_does_not_fit_is_one_row_error(tiny_models):
    cfg = PipelineConfig.from_dict(tiny_config(*tiny_models))
    ann = Annotator(cfg)
    for runner in ann.engine.runners.values():
        runner.model = RunsOutOfMemory(runner.model, limit=10)
    rows = ann.annotate(["short text", "a much longer text with many more words than the limit lets through"])
    assert rows[0]["error"] is None
    assert rows[1]["error"] and "OutOfMemoryError" in rows[1]["error"]
