"""`runtime.dtype: int8` on CPU: the encoder's matmuls quantized by ONNX Runtime, built once per
model revision and cached next to the downloaded models.

Why ONNX Runtime: measured on the demo models against torch's dynamic qint8 and torchao
(`python -m bench.int8`), it was the only candidate close to the quality gate; torch's
dynamic qint8 lost 3-4% of labels, torchao's eager int8 was over 20x slower than fp32.
The recipe: export the fp32 model (TorchScript exporter, opset 17), then dynamic
quantization with per-channel int8 weights for every MatMul except the feed-forward output
projections and the head, which stay fp32 (the variant with the best agreement). Logits
come out in fp32. The export is keyed by model revision, recipe and library versions, so
actors and replicas on a node share one copy and never redo it on start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

RECIPE = "ort-dynamic-int8-per-channel-ffn-out-fp32-v2"  # v2: exported by keyword, one named output
INSTALL_HINT = "runtime.dtype int8 needs ONNX Runtime: pip install -e '.[int8]' (in the checkout)"


class Int8Unavailable(RuntimeError):
    """int8 was asked for but cannot run here (library missing, or not a CPU)."""


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _versions() -> str:
    import onnx
    import onnxruntime
    import torch

    return f"{RECIPE}|ort {onnxruntime.__version__}|onnx {onnx.__version__}|torch {torch.__version__}"


def cache_entry(task: str, revision: str, cache_dir: Path) -> Path:
    """The directory that holds one model revision's int8 build (and its measured verdict)."""
    key = hashlib.sha256(f"{task}|{revision}|{_versions()}".encode()).hexdigest()[:20]
    return cache_dir / "int8" / f"{task}-{key}"


def int8_path(
    load_fp32: Callable[[], Any], task: str, revision: str, cache_dir: Path, output: str = "logits"
) -> Path:
    """The quantized ONNX file for this revision; exported (from `load_fp32()`) and quantized
    now if not cached."""
    if not available():
        raise Int8Unavailable(INSTALL_HINT)
    entry = cache_entry(task, revision, cache_dir)
    target = entry / "model.onnx"
    if target.exists():
        return target
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock", timeout=1800):
        if target.exists():  # another actor on this node built it while we waited
            return target
        start = time.perf_counter()
        tmp = entry.parent / f"{entry.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        export_fp32(load_fp32(), tmp / "fp32.onnx", output)
        quantize_int8(tmp / "fp32.onnx", tmp / "model.onnx")
        (tmp / "fp32.onnx").unlink()
        (tmp / "build.json").write_text(
            json.dumps({"task": task, "revision": revision, "built": _versions()})
        )
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        log.warning(
            "built the int8 %s model for %s in %.1f s (cached in %s)",
            task,
            revision,
            time.perf_counter() - start,
            entry,
        )
    return target


def export_fp32(model: Any, path: Path, output: str = "logits") -> None:
    import warnings

    import torch

    class Named(torch.nn.Module):
        """The model called by keyword, one named output: what ModelRunner calls and reads,
        whatever order the model's own forward takes its arguments in."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask), output)

    model = Named(model.float().eval()).eval()
    ids = torch.ones(2, 16, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=[output],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, output: axes},
            dynamo=False,
            opset_version=17,
        )


def quantize_int8(src: Path, dst: Path, keep_fp32: tuple[str, ...] = ("/output/dense", "classifier")) -> None:
    """Dynamic int8 (per-channel weights) for every MatMul except those named by `keep_fp32`
    (by default the feed-forward output projections and the head; attention outputs stay int8)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [
        n.name
        for n in onnx.load(str(src)).graph.node
        if n.op_type in ("MatMul", "Gemm")
        and any(k in n.name for k in keep_fp32)
        and "attention/output" not in n.name
    ]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's "consider pre-processing" hint, on the root logger, every build
    try:
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep
        )
    finally:
        root.setLevel(level)


class OrtModel:
    """An ONNX Runtime session behind the `model(input_ids=, attention_mask=).<output>` call
    ModelRunner makes, so batching, budgets and decoding stay the same code for every dtype."""

    dtype = "int8"

    def __init__(self, path: Path, threads: int | None, output: str = "logits") -> None:
        import onnxruntime as ort
        import torch

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.device = torch.device("cpu")
        self.output = output
        self._torch = torch

    def __call__(self, input_ids: Any, attention_mask: Any) -> SimpleNamespace:
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        (value,) = self.session.run([self.output], feed)
        return SimpleNamespace(**{self.output: self._torch.from_numpy(value)})


def int8_model(
    load_fp32: Callable[[], Any],
    task: str,
    revision: str,
    cache_dir: Path,
    threads: int | None = None,
    output: str = "logits",
) -> OrtModel:
    """The model's int8 twin, read from the cache (built from `load_fp32()` the first time)."""
    return OrtModel(int8_path(load_fp32, task, revision, cache_dir, output), threads, output)


def _verdict_file(task: str, revision: str, cache_dir: Path, cpu: str) -> Path:
    """One verdict per CPU model: nodes of different kinds may share a cache_dir."""
    name = hashlib.sha256(cpu.encode()).hexdigest()[:12]
    return cache_entry(task, revision, cache_dir) / f"verdict-{name}.json"


def read_verdict(task: str, revision: str, cache_dir: Path, cpu: str) -> dict | None:
    """What `pipeline models quantize` measured for this revision on this CPU model, if anything."""
    if not (cache_dir / "int8").is_dir() or not available():  # the usual case: no import at all
        return None
    try:
        return json.loads(_verdict_file(task, revision, cache_dir, cpu).read_text())
    except (OSError, ValueError):
        return None


def write_verdict(task: str, revision: str, cache_dir: Path, verdict: dict) -> Path:
    """Written whole or not at all (a reader never sees half a file)."""
    path = _verdict_file(task, revision, cache_dir, verdict["cpu"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(verdict, indent=2))
    os.replace(tmp, path)
    return path
