"""Find, fetch and load models safely, and pick the device and dtype they run in.

A source is a local directory, an `s3://bucket/prefix/` (downloaded once per node into a
cache keyed by the objects' ETags, under a file lock so concurrent workers share one copy),
or a Hugging Face hub id. Weights load from safetensors only unless the model entry says
`allow_pickle: true`; remote code never runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pipeline import heap
from pipeline.config import DEFAULT_KINDS, HUB_ID, ModelSpec, PipelineConfig, RuntimeConfig, S3Options
from pipeline.model_facts import ModelFacts, saved_facts, sentence_facts, weight_shapes
from pipeline.storage import (
    StorageError,
    botocore_retries_only,
    is_s3,
    is_transient,
    s3_filesystem,
    strip_scheme,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NEVER_FETCH = (".h5", ".msgpack", ".onnx", ".ot", ".tflite", ".gguf")


class ModelLoadError(RuntimeError):
    """A model that cannot be found, fetched or loaded; the message names the source."""


@dataclass
class LoadedModel:
    """A ready-to-run model with everything the encode/infer/decode steps need to know about it."""

    name: str  # the model's name in the config (`classifier`, `ner`, `sentiment`, ...)
    spec: ModelSpec
    path: Path
    revision: str
    facts: ModelFacts = field(repr=False)  # tokenizer, labels, scoring: what encode and decode read
    model: Any = None  # None when loaded without weights (encode/decode workers)
    dtype: str | None = None  # what the weights run in: fp32, bf16, fp16, int8; None without weights
    engine: str | None = None  # torch or onnxruntime; None without weights
    # dtype auto on a CPU with no tune verdict for this revision and CPU model, where tuning has
    # a variant to try: it runs the unmeasured default (reports suggest `pipeline models tune`)
    untuned: bool = False

    @property
    def runs_as(self) -> str | None:
        """What reports and /v1/stats show: the dtype, prefixed `ort-` on ONNX Runtime."""
        if self.dtype is None:
            return None
        return f"ort-{self.dtype}" if self.engine == "onnxruntime" else self.dtype

    @cached_property
    def tokenizer(self) -> Any:
        """The HF tokenizer, read when first asked for: encoding runs on `facts.tokenizer`, so
        an inference actor never pays for transformers' tokenizer import and load."""
        return load_tokenizer(self.path, self.spec.source)

    @property
    def id2label(self) -> dict[int, str]:
        return self.facts.id2label

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def cache_name(self) -> str:
        """Names the model's kind in cache paths (int8 builds, verdicts): `classifier` or `ner`,
        whatever the model is called, so one build serves every config that uses it."""
        return next(name for name, kind in DEFAULT_KINDS.items() if kind == self.spec.kind)

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "kind": self.kind,
            "source": self.spec.source,
            "revision": self.revision,
            "labels": [self.id2label[i] for i in sorted(self.id2label)],
            "max_length": self.spec.max_length,
        } | ({"dtype": self.dtype, "engine": self.engine} if self.dtype else {})


def default_cache_dir(cfg: PipelineConfig | None = None) -> Path:
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("BERT_PIPELINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bert-pipeline"


def resolve_source(spec: ModelSpec, s3: S3Options, cache_dir: Path) -> tuple[Path, str]:
    """Turn a model source into a local directory and a revision string for lineage."""
    source = spec.source
    if is_s3(source):
        return _fetch_s3(source, s3, cache_dir, spec.allow_pickle)
    local = local_dir(source)
    if local is not None:
        return local, _local_fingerprint(local)
    return _fetch_hub(source, spec.revision, spec.allow_pickle)


def local_dir(source: str) -> Path | None:
    """The model directory a local source names, or None for a hub id; a path that names no
    directory is an error here, on the driver, before any worker tries to load it."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ModelLoadError(f"model source {source!r} is a file; point it at the model directory")
    if not HUB_ID.match(source) or source.startswith((".", "/", "~")):
        hint = " (build the demo models with `pipeline models demo`)" if "demo" in local.parts else ""
        raise ModelLoadError(f"model directory {source!r} does not exist{hint}")
    return None


def _wanted(name: str, allow_pickle: bool) -> bool:
    lower = name.lower()
    if lower.endswith(NEVER_FETCH):
        return False
    return allow_pickle or not lower.endswith(PICKLE_SUFFIXES)


def _s3_listing(source: str, s3: S3Options, allow_pickle: bool) -> tuple[Any, str, dict[str, str], str]:
    """(filesystem, prefix, {relative key: ETag}, digest) of an s3:// model prefix."""
    fs = s3_filesystem(s3)
    prefix = strip_scheme(source).rstrip("/")
    try:
        with botocore_retries_only(fs):
            listing = fs.find(prefix, detail=True)
    except Exception as exc:  # noqa: BLE001 - any S3 failure becomes one clear message
        if is_transient(exc):  # the store, not the config: a later run may well succeed
            raise StorageError("listing model source", source, exc) from exc
        raise ModelLoadError(f"cannot list model source {source}: {type(exc).__name__}: {exc}") from exc
    objects = {
        key[len(prefix) + 1 :]: str(info.get("ETag") or info.get("etag") or info.get("size"))
        for key, info in listing.items()
        if info.get("type", "file") != "directory" and _wanted(key, allow_pickle)
    }
    objects = {k: v for k, v in objects.items() if k}
    if "config.json" not in objects:
        raise ModelLoadError(f"model source {source} has no config.json (found: {sorted(objects)[:10]})")
    digest = hashlib.sha256(json.dumps([source, sorted(objects.items())]).encode()).hexdigest()[:20]
    return fs, prefix, objects, digest


def source_revision(spec: ModelSpec, s3: S3Options) -> str:
    """The revision string of a source without downloading it (for lineage on the driver)."""
    if is_s3(spec.source):
        return f"s3-etag:{_s3_listing(spec.source, s3, spec.allow_pickle)[3]}"
    local = local_dir(spec.source)
    if local is not None:
        return _local_fingerprint(local)
    return f"hub:{spec.revision or 'main'}"


def model_revisions(cfg: PipelineConfig) -> dict[str, dict[str, str]]:
    """{model: {source, revision}} of every configured model, without loading any; a missing
    source fails here, on the driver, in one line (lineage, and the check before Ray starts)."""
    return {
        name: {"source": spec.source, "revision": source_revision(spec, cfg.s3)}
        for name, spec in cfg.models.items()
    }


def _fetch_s3(source: str, s3: S3Options, cache_dir: Path, allow_pickle: bool) -> tuple[Path, str]:
    fs, prefix, objects, digest = _s3_listing(source, s3, allow_pickle)
    target = cache_dir / "s3" / digest
    done = target / ".complete"
    if done.exists():
        return target, f"s3-etag:{digest}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=1800):
        if done.exists():  # another process on this node fetched it while we waited
            return target, f"s3-etag:{digest}"
        tmp = target.parent / f"{digest}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for rel in sorted(objects):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"{prefix}/{rel}", str(dest))
            except Exception as exc:  # noqa: BLE001 - one clear message, the cause kept
                if is_transient(exc):
                    raise StorageError("downloading model file", f"{source.rstrip('/')}/{rel}", exc) from exc
                raise ModelLoadError(
                    f"cannot download {source.rstrip('/')}/{rel}: {type(exc).__name__}: {exc}"
                ) from exc
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        done.write_text(json.dumps({"source": source, "objects": objects}))
    log.info("fetched model %s into %s", source, target)
    return target, f"s3-etag:{digest}"


def _fetch_hub(repo_id: str, revision: str | None, allow_pickle: bool) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - offline, missing, gated: same advice
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not load model {repo_id!r} from the Hugging Face hub ({reason}). "
            "If the hub is unreachable from here, download the model once and set the "
            "source to a local directory or an s3:// URI."
        ) from None
    return path, f"hub:{path.name}"


WHOLE_FILE_BYTES = 64 << 20  # weight files up to this size are hashed whole
SAMPLE_BLOCKS, BLOCK_BYTES = 16, 1 << 20  # larger ones: 16 evenly spaced 1 MiB blocks and the tail


def _local_fingerprint(path: Path) -> str:
    """A content fingerprint of a model directory: config and tokenizer files, and the weights
    (whole, or sampled when large), never mtimes. Two copies of one model on two nodes get
    the same revision; new weights get a new one (the night checks its stages against it)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        if f.suffix in (".json", ".txt"):
            h.update(f"{f.name}:".encode() + f.read_bytes())
        elif f.suffix == ".safetensors" or f.suffix in PICKLE_SUFFIXES:
            size = f.stat().st_size
            h.update(f"{f.name}:{size}:".encode())
            _hash_weights(f, size, h)
    return f"local:{h.hexdigest()[:16]}"


def _hash_weights(f: Path, size: int, h: Any) -> None:
    with f.open("rb") as stream:
        if size <= WHOLE_FILE_BYTES:
            h.update(stream.read())
            return
        step = (size - BLOCK_BYTES) // SAMPLE_BLOCKS
        for k in range(SAMPLE_BLOCKS):
            stream.seek(k * step)
            h.update(stream.read(BLOCK_BYTES))
        stream.seek(size - BLOCK_BYTES)
        h.update(stream.read(BLOCK_BYTES))


def check_weights_safe(path: Path, allow_pickle: bool) -> None:
    """Refuse pickle weights (arbitrary code on load) unless explicitly allowed."""
    names = {f.name for f in path.iterdir() if f.is_file()}
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"model at {path} has only pickle weights ({', '.join(pickles)}); pickle can run code "
            "on load. Convert them to safetensors, or set allow_pickle: true on this model entry "
            "if you trust the source."
        )
    if not pickles:
        raise ModelLoadError(f"model at {path} has no weights (*.safetensors)")


def load_tokenizer(path: Path, source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, use_fast=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load tokenizer of {source}: {type(exc).__name__}: {exc}") from None
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(
            f"tokenizer of {source} is a slow (Python) tokenizer; a fast tokenizer (tokenizer.json) "
            "is required for character offsets"
        )
    return tok


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@cache
def cpu_name() -> str:
    """This machine's CPU model and the instruction sets speed depends on: a verdict measured on
    one CPU says nothing about another, and a VM's model name alone ("AMD EPYC") can be both an
    AVX2-only and an AVX-512 machine."""
    name, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or platform.machine()
    isa = [f for f in ISA_FLAGS if f in flags]
    return f"{name} ({' '.join(isa)})" if isa else name


@cache
def cpu_has_fast_bf16() -> bool:
    """bf16 pays off on CPUs with AMX or AVX512-BF16, and only where oneDNN may use them (an
    `ONEDNN_MAX_CPU_ISA` below AVX-512 turns them off); elsewhere it is emulated and slow."""
    import torch

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose_device(runtime: RuntimeConfig) -> torch.device:
    import torch

    want = runtime.device
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn("device cuda requested but CUDA is not available; running on CPU", stacklevel=2)
        return torch.device("cpu")
    return torch.device(want)


def choose_dtype(runtime: RuntimeConfig, device: torch.device) -> torch.dtype:
    """The torch dtype for a dtype name or auto; int8 reads fp32 weights to quantize (pipeline.ort_engine)."""
    import torch

    named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}
    if runtime.dtype != "auto":
        return named[runtime.dtype]
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """The config's name for a torch dtype (fp32, fp16, bf16)."""
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[str(dtype).removeprefix("torch.")]


def load_model(
    name: str,
    spec: ModelSpec,
    *,
    s3: S3Options,
    cache_dir: Path,
    runtime: RuntimeConfig | None = None,
    device: torch.device | None = None,
    weights: bool = True,
    threads: int | None = None,
) -> LoadedModel:
    """Resolve, check and load one model's tokenizer and config, and its weights when asked.

    Encode and decode steps need only the tokenizer and labels (`weights=False`): CPU
    workers never spend memory or time on weights they do not run. The engine and dtype are
    `choose_variant`'s; `threads` is what an ONNX Runtime session may use (torch's own
    setting otherwise).
    """
    path, revision = resolve_source(spec, s3, cache_dir)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model source {spec.source} has no config.json")
    check_weights_safe(path, spec.allow_pickle)
    # transformers is imported only where facts are not saved yet, or to load torch weights
    facts = saved_facts(path, revision, cache_dir, lambda: _read_facts(path, spec.source))
    loaded = _checked(LoadedModel(name, _own_length(spec, facts), path, revision, facts))
    if not weights:
        return loaded
    device = device or _cpu()
    engine, dtype, loaded.untuned = choose_variant(runtime or RuntimeConfig(), device, loaded, cache_dir)
    if loaded.untuned:
        log.info(
            "%s runs %s %s untuned: `pipeline models tune CONFIG` measures the variants this CPU can run",
            name,
            engine,
            dtype,
        )
    if engine == "onnxruntime":
        from pipeline.ort_engine import ort_model

        # fp32 weights are read only when this revision has no cached ONNX build yet
        loaded.model = ort_model(
            lambda: _load_weights(spec, path, device, None, attention="eager"),
            loaded.cache_name,
            revision,
            cache_dir,
            dtype=dtype,
            threads=threads,
            output=spec.output_name,
        )
        loaded.dtype = dtype
    else:
        loaded.model = _load_weights(spec, path, device, torch_dtype(dtype))
        loaded.dtype = dtype_name(loaded.model.dtype)
    loaded.engine = engine
    return loaded


def _read_hf(path: Path, source: str) -> tuple[Any, Any]:
    """The model's HF tokenizer and config."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise in job logs
    tokenizer = load_tokenizer(path, source)
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read config of {source}: {exc}") from None
    return tokenizer, config


def _read_facts(path: Path, source: str) -> ModelFacts:
    """The model's facts, read through its HF tokenizer and config."""
    tokenizer, config = _read_hf(path, source)
    return ModelFacts.of(tokenizer, config, weight_shapes(path), sentence_facts(path))


def _own_length(spec: ModelSpec, facts: ModelFacts) -> ModelSpec:
    """A sentence-transformers folder names the length its model reads (`max_seq_length`): that
    is the window length, unless the config sets `max_length` itself."""
    own = (facts.sentence or {}).get("max_seq_length")
    if own and "max_length" not in spec.model_fields_set:
        return spec.model_copy(update={"max_length": int(own)})
    return spec


def _checked(lm: LoadedModel) -> LoadedModel:
    """Refuse, in one line, a model that would fail or mislabel every row: windows longer than
    its positions, a tokenizer that emits ids past its embedding table, a label map that is not
    its head's."""
    facts, where, source = lm.facts, f"models.{lm.name}", lm.spec.source
    max_pos = facts.max_positions
    if max_pos and lm.spec.max_length > max_pos:
        raise ModelLoadError(
            f"{where}.max_length is {lm.spec.max_length} but {source} has only {max_pos} positions"
        )
    tok = facts.tokenizer
    top_id = max(facts.token_ids - 1, *tok.prefix, *tok.suffix, tok.pad_id)
    if facts.embedding_rows and top_id >= facts.embedding_rows:
        raise ModelLoadError(
            f"{where}: the tokenizer of {source} emits ids up to {top_id} but the model's embedding table "
            f"has {facts.embedding_rows} rows: every text with a token past it would fail. Save the model "
            "with the tokenizer it was trained with"
        )
    labels = sorted(facts.id2label)
    if labels != list(range(facts.num_labels)):
        raise ModelLoadError(
            f"{where}: the label map of {source} has ids {labels[:8]}, not 0..{facts.num_labels - 1}"
        )
    if facts.head_rows is not None and facts.head_rows != facts.num_labels:
        raise ModelLoadError(
            f"{where}: {source} has {facts.num_labels} labels in its config (id2label) but its "
            f"classification head has {facts.head_rows} outputs: the label map is not this head's"
        )
    return lm


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def choose_variant(
    runtime: RuntimeConfig, device: torch.device, loaded: LoadedModel, cache_dir: Path
) -> tuple[str, str, bool]:
    """(engine, dtype, untuned) for one model. An explicit engine or dtype wins; `dtype: auto`
    on a CPU follows the verdict `pipeline models tune` measured for this revision on this CPU
    model, and without one runs torch in the float dtype the CPU is fast at. `untuned`: that
    default ran where tuning has another variant to try (ONNX Runtime, or native bf16's gate)."""
    from pipeline import ort_engine

    engine: str = runtime.engine
    dtype: str = runtime.dtype
    untuned = False
    if device.type != "cpu":
        if engine == "onnxruntime" or dtype == "int8":
            raise ModelLoadError(
                f"the onnxruntime engine and int8 run on CPU only; use engine torch, dtype fp16 (or auto) on {device.type}"
            )
        return "torch", dtype_name(choose_dtype(runtime, device)), untuned
    if dtype == "auto":
        verdict = ort_engine.read_verdict(loaded.cache_name, loaded.revision, cache_dir, cpu_name())
        picks = (verdict or {}).get("best_by_engine", {})
        pick = picks.get(engine) if engine != "auto" else (verdict or {}).get("choice")
        if pick and not (pick["dtype"] == "bf16" and not cpu_has_fast_bf16()):  # emulated here after all
            engine, dtype = pick["engine"], pick["dtype"]
        else:
            untuned = (engine != "torch" and ort_engine.available()) or (
                engine != "onnxruntime" and cpu_has_fast_bf16()
            )
            engine = "torch" if engine == "auto" else engine
            dtype = "fp32" if engine == "onnxruntime" else dtype_name(choose_dtype(runtime, device))
    elif engine == "auto":
        engine = "onnxruntime" if dtype == "int8" else "torch"
    if engine == "onnxruntime" and not ort_engine.available():
        raise ModelLoadError(ort_engine.INSTALL_HINT)
    return engine, dtype, untuned


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _load_weights(
    spec: ModelSpec, path: Path, device: torch.device, dtype: torch.dtype | None, attention: str = "sdpa"
):
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise in job logs
    try:
        auto = getattr(transformers, spec.auto_class)
        model = auto.from_pretrained(
            str(path),
            trust_remote_code=False,
            use_safetensors=None if spec.allow_pickle else True,
            dtype=dtype or torch.float32,
            attn_implementation=attention,
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"cannot load {spec.kind} model from {spec.source}: {type(exc).__name__}: {exc}"
        ) from None
    return model.to(device).eval()


def threads_per_model(total: int, models: int, parallel: bool) -> int:
    """Each model's share of the process's CPU threads when the models run side by side (at
    least one each), so the process runs no more threads at once than one after the other."""
    return max(1, total // models) if parallel and models > 1 else total


def load_models(cfg: PipelineConfig, *, weights: bool = True) -> dict[str, LoadedModel]:
    """Load every configured model on the device, engine and dtype the runtime section asks for."""
    if weights:
        heap.bound_kernel_caches()
    device = choose_device(cfg.runtime) if weights else None
    threads = None
    if weights:
        import torch

        threads = threads_per_model(torch.get_num_threads(), len(cfg.models), cfg.runtime.parallel_models)
    cache_dir = default_cache_dir(cfg)
    return {
        name: load_model(
            name,
            spec,
            s3=cfg.s3,
            cache_dir=cache_dir,
            runtime=cfg.runtime,
            device=device,
            weights=weights,
            threads=threads,
        )
        for name, spec in cfg.models.items()
    }
