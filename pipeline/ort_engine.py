"""The ONNX Runtime engine for CPUs (`runtime.engine: onnxruntime`): fp32 and int8 graphs with
ONNX Runtime's transformer fusions, built once per model revision and cached beside the
downloaded models.

Why ONNX Runtime: its BERT fusions (EmbedLayerNormalization, Attention, SkipLayerNormalization,
BiasGelu) cut the memory traffic of every layer, and its int8 kernels were the only ones close
to the quality gate (`python -m bench.int8`: torch's dynamic qint8 lost 3-4% of labels,
torchao's eager int8 was over 20x slower than fp32).

The recipe: export the fp32 model with eager attention (the TorchScript exporter, opset 17:
SDPA exports as one opaque subgraph the Attention fusion does not recognise, so only the
layer norms and Gelu would fuse), fuse with `onnxruntime.transformers.optimizer`, and for
int8 quantize the fused graph dynamically, per-channel int8 weights for every MatMul and the
fused Attention, except the feed-forward output projections and the head, which stay fp32
(the variant with the best agreement), and the embeddings. Outputs stay fp32. The files are
keyed by model revision, recipe and library versions, so actors and replicas on a node share
one copy and never redo it on start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

# v3: eager-attention export, BERT fusions, int8 quantized from the fused graph
RECIPE = "ort-v3-eager-export-bert-fusions-int8-per-channel-ffn-out-fp32"
INSTALL_HINT = (
    "the onnxruntime engine (and int8) needs ONNX Runtime: pip install -e '.[int8]' (in the checkout)"
)
DTYPES = ("fp32", "int8")


class OrtUnavailable(RuntimeError):
    """The onnxruntime engine was asked for but cannot run here (library missing)."""


def available() -> bool:
    """Whether the int8 extra is installed, without importing it: a torch actor that only asks
    (dtype auto with no verdict) pays no onnx/onnxruntime import on its way to the first batch."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def _versions() -> str:
    """Read from the installed metadata: reading a verdict must not import ONNX Runtime."""
    libs = ("onnxruntime", "onnx", "torch", "transformers")  # transformers: the exported graph
    return "|".join([RECIPE, *(f"{lib} {_version(lib)}" for lib in libs)])


def cache_entry(task: str, revision: str, cache_dir: Path) -> Path:
    """The directory that holds one model revision's ONNX builds and its measured verdicts."""
    key = hashlib.sha256(f"{task}|{revision}|{_versions()}".encode()).hexdigest()[:20]
    return cache_dir / "onnx" / f"{task}-{key}"


def onnx_file(
    load_fp32: Callable[[], Any],
    task: str,
    revision: str,
    cache_dir: Path,
    dtype: str = "fp32",
    output: str = "logits",
) -> Path:
    """The fused (and for int8 quantized) ONNX file for this revision; built now from
    `load_fp32()` (an eager-attention fp32 model) if not cached."""
    if not available():
        raise OrtUnavailable(INSTALL_HINT)
    if dtype not in DTYPES:
        raise ValueError(f"the onnxruntime engine runs {' or '.join(DTYPES)}, not {dtype}")
    entry = cache_entry(task, revision, cache_dir)
    target = entry / f"{dtype}.onnx"
    if target.exists():
        return target
    entry.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock", timeout=1800):
        if target.exists():  # another actor on this node built it while we waited
            return target
        start = time.perf_counter()
        tmp = entry / f".tmp-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        fused = entry / "fp32.onnx"
        facts: dict[str, Any] = {}
        try:
            if not fused.exists():
                model = load_fp32()
                export_fp32(model, tmp / "raw.onnx", output)
                facts["fused"] = fuse(tmp / "raw.onnx", tmp / "fp32.onnx", model.config)
                os.replace(tmp / "fp32.onnx", fused)
            if dtype == "int8":
                quantize_int8(fused, tmp / "int8.onnx")
                os.replace(tmp / "int8.onnx", target)
            meta = entry / "build.json"
            try:
                old = json.loads(meta.read_text())
            except (OSError, ValueError):
                old = {}
            built = {"task": task, "revision": revision, "built": _versions()}
            (tmp / "build.json").write_text(
                json.dumps(old | built | facts | {dtype: round(time.perf_counter() - start, 1)})
            )
            os.replace(tmp / "build.json", meta)
        finally:  # a failed export leaves nothing behind for the next attempt to trip on
            shutil.rmtree(tmp, ignore_errors=True)
        log.warning(
            "built the onnxruntime %s %s model for %s in %.1f s (cached in %s)",
            dtype,
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


def fuse(src: Path, dst: Path, config: Any) -> dict[str, int]:
    """ONNX Runtime's BERT fusions; returns how many of each fused operator the graph got."""
    from onnxruntime.transformers.optimizer import optimize_model

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the optimizer's per-fusion INFO lines
    try:
        model = optimize_model(
            str(src),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
        )
    finally:
        root.setLevel(level)
    model.save_model_to_file(str(dst))
    return {op: n for op, n in model.get_fused_operator_statistics().items() if n}


def quantize_int8(src: Path, dst: Path, keep_fp32: tuple[str, ...] = ("/output/dense", "classifier")) -> None:
    """Dynamic int8 (per-channel weights) for every MatMul and fused Attention except the
    MatMuls named by `keep_fp32` (by default the feed-forward output projections and the
    head; attention outputs stay int8). The embeddings stay fp32."""
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
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=keep,
            op_types_to_quantize=["MatMul", "Attention"],
            # the fused operators (Attention, SkipLayerNormalization) are outside ONNX's shape
            # inference: their outputs are fp32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


class OrtModel:
    """An ONNX Runtime session behind the `model(input_ids=, attention_mask=).<output>` call
    ModelRunner makes, so batching, budgets and decoding stay the same code for every engine."""

    def __init__(self, path: Path, dtype: str, threads: int | None, output: str = "logits") -> None:
        import onnxruntime as ort
        import torch

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initializers, once per session
        # no spin-waiting between operators: on a node where encode and decode tasks share the
        # cores, a spinning thread takes CPU they need
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.dtype = dtype
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.device = torch.device("cpu")
        self.output = output
        self._torch = torch

    def __call__(self, input_ids: Any, attention_mask: Any) -> SimpleNamespace:
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        (value,) = self.session.run([self.output], feed)
        return SimpleNamespace(**{self.output: self._torch.from_numpy(value)})


def ort_model(
    load_fp32: Callable[[], Any],
    task: str,
    revision: str,
    cache_dir: Path,
    dtype: str = "fp32",
    threads: int | None = None,
    output: str = "logits",
) -> OrtModel:
    """The model's ONNX Runtime twin, read from the cache (built from `load_fp32()` the first time)."""
    return OrtModel(onnx_file(load_fp32, task, revision, cache_dir, dtype, output), dtype, threads, output)


def _verdict_file(task: str, revision: str, cache_dir: Path, cpu: str) -> Path:
    """One verdict per CPU model: nodes of different kinds may share a cache_dir."""
    name = hashlib.sha256(cpu.encode()).hexdigest()[:12]
    return cache_entry(task, revision, cache_dir) / f"verdict-{name}.json"


def read_verdict(task: str, revision: str, cache_dir: Path, cpu: str) -> dict | None:
    """What `pipeline models tune` measured for this revision on this CPU model, if anything."""
    if not (cache_dir / "onnx").is_dir():  # the usual case: nothing measured, nothing to read
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
