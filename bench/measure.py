"""What the benchmark measures besides wall time: matmul peak, model FLOPs, padding, memory."""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

import numpy as np


def matmul_peak(dtype: str, device: str = "cpu", size: int = 2048, seconds: float = 3.0) -> float:
    """Measured GFLOP/s of a square matmul in this dtype on this device (the MFU denominator).

    The matrix grows from 256 up to `size` only while one product stays well inside the time
    budget: a CPU without native bf16 runs it at ~1 GFLOP/s, where one 2048² product takes
    13 s and a fixed size made the sampling, not the contenders, the whole benchmark.
    """
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    n_side = 256
    while True:
        a = torch.randn(n_side, n_side, device=device, dtype=dt)
        b = torch.randn(n_side, n_side, device=device, dtype=dt)
        a @ b  # warm-up (kernel selection, caches)
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        one = time.perf_counter() - start
        if n_side * 2 > size or one * 8 * 20 > seconds:  # the next size (8x work) must fit 1/20
            break
        n_side *= 2
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        a @ b
        n += 1
    sync()
    return 2 * n_side**3 * n / (time.perf_counter() - start) / 1e9


def model_shape(path: Path) -> tuple[int, int]:
    """(layers, hidden) of a BERT-family model directory."""
    import json

    cfg = json.loads((path / "config.json").read_text())
    return int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])


def sequence_flops(lengths: np.ndarray, layers: int, hidden: int) -> float:
    """Forward FLOPs of real tokens: per layer 24*n*h^2 (projections, FFN) + 4*n^2*h (attention)."""
    n = lengths.astype(np.float64)
    return float(layers * (24 * n * hidden**2 + 4 * n**2 * hidden).sum())


def padded_in_order(lengths: list[int], batch_size: int) -> int:
    """Tokens computed when sequences are batched in arrival order and padded to each batch's longest."""
    total = 0
    for lo in range(0, len(lengths), batch_size):
        chunk = lengths[lo : lo + batch_size]
        total += max(chunk) * len(chunk)
    return total


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _ray_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::" in cmd or b"default_worker.py" in cmd:
                pids.append(int(entry))
    return pids


class PeakMemory:
    """Samples RSS of this process plus Ray worker processes; peak in MiB."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_kb = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = _rss_kb(me) + sum(_rss_kb(p) for p in _ray_pids() if p != me)
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> int:
        return self.peak_kb // 1024


@functools.lru_cache(maxsize=4)
def _bare_model(model_dir: Path, dtype: str):
    import torch
    from transformers import AutoModelForTokenClassification

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForTokenClassification.from_pretrained(
        str(model_dir), dtype=dt, attn_implementation="sdpa"
    )
    return model.eval()


def forward_ceiling(
    model_dir: Path, dtype: str, seconds: float = 1.0, shape: tuple[int, int] = (8, 128)
) -> float:
    """GFLOP/s of the bare model forward on dense, unpadded batches.

    No tokenization, padding, Ray or decode: the most any end-to-end run of this model in this
    dtype can reach, so it bounds the MFU target.
    """
    import torch

    model = _bare_model(model_dir, dtype)
    batch, length = shape
    ids = torch.randint(1000, 2000, (batch, length))
    mask = torch.ones_like(ids)
    layers, hidden = model_shape(model_dir)
    flops = sequence_flops(np.full(batch, length), layers, hidden)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
        n, start = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - start < seconds:
            model(input_ids=ids, attention_mask=mask)
            n += 1
    return flops * n / (time.perf_counter() - start) / 1e9
