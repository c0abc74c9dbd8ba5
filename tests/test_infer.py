"""Micro-batch planning: every sequence exactly once, bounded batch size, little padding."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.infer import ModelRunner


def test_plan_covers_everything_once_and_pads_little():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([np.full(40, 512), rng.integers(5, 120, 300), rng.integers(200, 512, 30)])
    runner = ModelRunner(torch.nn.Linear(2, 2), batch_size=32, pad_id=0, pad_multiple=None, max_length=512)
    order = np.argsort(-lengths, kind="stable")
    batches = runner.plan(lengths[order], order)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert max(len(b) for b in batches) <= 32
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert lengths.sum() / padded >= 0.95
    naive = sum(len(c) * lengths[c].max() for c in np.array_split(order, range(32, len(order), 32)))
    assert padded < naive


def test_cpu_batches_come_in_few_row_counts_tails_included():
    """Every CPU batch, a block's tail too, has a whole multiple of 16 rows or a power of two
    under 16: a night of blocks of every size then runs a few shapes, which oneDNN caches, rather
    than one more per block (and the inference actor's memory growing with each)."""
    rng = np.random.default_rng(1)
    runner = ModelRunner(torch.nn.Linear(2, 2), batch_size=128, pad_id=0, pad_multiple=8, max_length=512)
    rows = set()
    for size in range(1990, 2048):  # blocks of every size leave tails of every length
        lengths = rng.integers(5, 200, size)
        order = np.argsort(-lengths, kind="stable")
        batches = runner.plan(lengths[order], order)
        assert sorted(np.concatenate(batches).tolist()) == list(range(size))
        rows |= {len(b) for b in batches}
    assert rows <= {1, 2, 4, 8, *range(16, 129, 16)}, sorted(rows)
    assert {1, 2, 4, 8} & rows  # the tails did occur
