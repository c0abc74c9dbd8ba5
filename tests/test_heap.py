"""A long-lived model process stays flat as a night brings new batch shapes (pipeline.heap)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from pipeline.heap import KERNEL_CACHES
from tests.conftest import tiny_config

# In a fresh process, as an inference actor starts: load the models through the engine, then run
# one forward per new (rows, width) shape and record the heap in use (glibc) after each.
PROBE = """
import ctypes, json, sys
import numpy as np, torch
from pipeline.config import PipelineConfig
from pipeline.engine import Engine

torch.set_num_threads(1)
runner = next(iter(Engine.build(PipelineConfig.model_validate(json.loads(sys.argv[1]))).infer.runners.values()))
class MallInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo
used = []
for width in range(8, 264, 8):
    for rows in (16, 32, 48, 64):
        runner._forward([np.full(width, 1000, dtype=np.int64)] * rows)
        used.append(libc.mallinfo2().uordblks)
print(json.dumps(used))
"""


def _heap_in_use(cfg: dict, env: dict[str, str]) -> list[int]:
    """The probe's heap in use after each new shape; `env` on top of this environment less the caps."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k not in KERNEL_CACHES}, **env},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _onednn_bf16() -> bool:
    """oneDNN runs bf16 (natively or on AVX-512 cores); only then do bf16 forwards fill ideep's
    per-shape kernel cache. On AVX2-only CPUs bf16 takes ATen's plain kernels and caches nothing."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.slow  # two fresh processes, ~45 s
@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc's mallinfo2")
@pytest.mark.skipif(
    not _onednn_bf16(), reason="needs oneDNN bf16 (AVX-512 or native bf16): no kernel cache here"
)
def test_kernel_caches_stop_growing_with_new_batch_shapes(tiny_models):
    """bf16 on a CPU caches kernels per shape. With ideep's default (1,024 entries) the heap
    grows ~0.8 MB with every new shape; capped (pipeline.heap.KERNEL_CACHES), about half that,
    the part in oneDNN's own primitive cache (left at its 1,024, which bounds it)."""
    cfg = tiny_config(tiny_models[0], None, runtime__dtype="bf16")
    cfg["models"]["classifier"]["max_length"] = 512
    defaults = _heap_in_use(cfg, dict.fromkeys(KERNEL_CACHES, "1024"))  # PyTorch's default
    bounded = _heap_in_use(cfg, {})
    half = len(bounded) // 2  # the second half: 64 more shapes, after the caps have filled
    grew_default = (defaults[-1] - defaults[half]) / 2**20
    grew_bounded = (bounded[-1] - bounded[half]) / 2**20
    assert grew_default > 30, f"PyTorch's own caches grew only {grew_default:.0f} MiB: nothing to bound?"
    assert grew_bounded < 0.7 * grew_default, (grew_bounded, grew_default)
