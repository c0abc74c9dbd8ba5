"""Typed configuration: one YAML file drives the batch job, the online API and the CLI.

Unknown keys and bad values are rejected up front with the dotted key in the message,
so a typo in a nightly config fails in the scheduler's log, not after an hour of GPU time.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, RootModel, ValidationError, model_validator

DType = Literal["auto", "fp32", "fp16", "bf16", "int8"]
Engine = Literal["auto", "torch", "onnxruntime"]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class S3Options(_Strict):
    """How to reach S3 or an S3-compatible store. Credentials come from the usual AWS chain, never from here."""

    endpoint_url: str | None = Field(
        None, description="an S3-compatible store; default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or AWS"
    )
    region: str | None = Field(None, description="default: the AWS chain's (AWS_DEFAULT_REGION, ...)")
    anonymous: bool = Field(False, description="unsigned requests, for public buckets")
    max_attempts: int = Field(
        10,
        ge=1,
        le=100,
        description="attempts per S3 request (pyarrow's and botocore's standard retry mode: "
        "throttling, 5xx and dropped connections are retried with backoff)",
    )
    connect_timeout_s: float | None = Field(None, gt=0, description="default: the library's")
    request_timeout_s: float | None = Field(None, gt=0, description="default: the library's")

    def resolved(self) -> S3Options:
        """With no endpoint_url, the standard AWS variables `AWS_ENDPOINT_URL_S3`, then
        `AWS_ENDPOINT_URL` (boto3, s3fs and the AWS CLI honour them; pyarrow does not)."""
        if self.endpoint_url:
            return self
        env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return self.model_copy(update={"endpoint_url": env}) if env else self


class ModelSpec(_Strict):
    """What every model entry has; each kind's spec (in its module under `pipeline.kinds`)
    adds its own keys and fixes `kind`."""

    auto_class: ClassVar[str] = "AutoModel"  # the transformers class that loads its weights
    output_name: ClassVar[str] = "logits"  # the model output its kind reads (and int8 exports)
    kind: str = Field(description="the model kind (pipeline.kinds.KINDS)")
    source: str = Field(min_length=1, description="local dir, s3://bucket/prefix/ or a hub id")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    max_length: int = Field(
        512,
        ge=4,
        le=8192,
        description="tokens per window, special tokens included; unset, a sentence-transformers "
        "folder's own max_seq_length",
    )
    stride: int = Field(128, ge=0, description="tokens shared by neighbouring windows (overlap, not step)")
    allow_pickle: bool = Field(False, description="allow pytorch_model.bin (pickle) weights")

    @model_validator(mode="after")
    def _stride_fits(self) -> ModelSpec:
        if self.stride >= self.max_length - 2:
            raise ValueError(
                f"stride ({self.stride}) must be smaller than max_length - 2 ({self.max_length - 2}): "
                "it is the overlap between windows"
            )
        return self


# The registered kinds' specs and the model names that imply a kind, filled by
# `pipeline.kinds.register` (the package imports the built-in kinds before any config is read).
SPECS: dict[str, type[ModelSpec]] = {}
DEFAULT_KINDS: dict[str, str] = {}
MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ModelsConfig(RootModel[dict[str, ModelSpec]]):
    """Named models, each with a `kind`; a kind's default name (`classifier`, `ner`, ...)
    implies it.

    Iteration order is the default names in registration order, then the others as written:
    the output columns keep one order whatever order the YAML lists them in.
    """

    @model_validator(mode="before")
    @classmethod
    def _kinds(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = {}
        for name, spec in data.items():
            if not isinstance(name, str) or not MODEL_NAME.match(name):
                raise ValueError(
                    f"model name {name!r}: use lower-case letters, digits and _ (it names output columns)"
                )
            if isinstance(spec, dict) and "kind" not in spec:
                if name not in DEFAULT_KINDS:
                    raise ValueError(f"model {name!r} needs a kind: {' | '.join(SPECS)}")
                spec = {**spec, "kind": DEFAULT_KINDS[name]}
            out[name] = spec
        return out

    @model_validator(mode="after")
    def _ordered(self) -> ModelsConfig:
        if not self.root:
            raise ValueError("configure at least one model (e.g. models.classifier or models.ner)")
        names = [n for n in DEFAULT_KINDS if n in self.root] + [
            n for n in self.root if n not in DEFAULT_KINDS
        ]
        self.root = {n: self.root[n] for n in names}
        return self

    def items(self):
        return self.root.items()

    def __iter__(self):  # a mapping's names, not pydantic's fields
        return iter(self.root)

    def __getitem__(self, name: str) -> ModelSpec:
        return self.root[name]

    def __contains__(self, name: object) -> bool:
        return name in self.root

    def __len__(self) -> int:
        return len(self.root)

    def get(self, name: str) -> ModelSpec | None:
        return self.root.get(name)

    @property
    def classifier(self) -> Any:
        return self.root.get("classifier")

    @property
    def ner(self) -> Any:
        return self.root.get("ner")


def register_spec(kind: str, spec: type[ModelSpec], default_name: str) -> None:
    """Make a kind's spec part of every config: `kind: <kind>` (or the model name
    `default_name`) validates against it, with its keys named in errors."""
    SPECS[kind] = spec
    DEFAULT_KINDS[default_name] = kind
    _rebuild()


def unregister_spec(kind: str, default_name: str) -> None:
    SPECS.pop(kind, None)
    DEFAULT_KINDS.pop(default_name, None)
    _rebuild()


def _rebuild() -> None:
    specs = tuple(SPECS.values())
    union: Any = specs[0] if len(specs) == 1 else Annotated[Union[specs], Field(discriminator="kind")]  # noqa: UP007 - a runtime tuple of types
    # pydantic builds a model's validator from its field annotations: set the union, rebuild
    # the models that hold it
    ModelsConfig.model_fields["root"].annotation = dict[str, union]
    ModelsConfig.model_rebuild(force=True)
    PipelineConfig.model_rebuild(force=True)


class RuntimeConfig(_Strict):
    batch_size: int = Field(64, ge=1, le=4096, description="sequences per forward pass")
    max_batch_tokens: int = Field(
        65_536,
        ge=64,
        description="padded tokens per forward pass: a batch closes before it would pass this, "
        "whatever batch_size says. 65,536 = 128 windows of 512 tokens, about 2-4 GB of fp16 "
        "activations for BERT-base: fits a 24 GB GPU with room to spare. Lower it for BERT-large "
        "or small GPUs; a batch that still runs out of memory is split in half and retried",
    )
    dtype: DType = Field(
        "auto",
        description="auto: fp16 on GPU; on CPU the engine and dtype `pipeline models tune` measured "
        "as the fastest that holds the quality gate on this CPU model, and without a verdict bf16 "
        "where the CPU has native bf16, else fp32. int8: CPU only, the onnxruntime engine (the int8 "
        "extra), always quantizes",
    )
    engine: Engine = Field(
        "auto",
        description="torch | onnxruntime (CPU only, fp32 or int8, the int8 extra) | auto: onnxruntime "
        "for int8; with dtype auto, the tuned verdict's engine; else torch",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto | cpu | cuda | cuda:N; auto: CUDA if present",
    )
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: torch's choice")
    parallel_models: bool = Field(
        True,
        description="run the models of a batch side by side, one thread each: on a CPU the second "
        "model's forward takes a spare core (num_threads are shared out between the models, at least "
        "one each), on a GPU one model's Python work overlaps the other's kernels. Off: one after "
        "the other",
    )
    max_chars: int = Field(10_000_000, ge=1, description="longer texts get a per-row error")
    pad_multiple: int | None = Field(
        None, ge=1, le=512, description="padded lengths are multiples of this (default 8)"
    )
    backend: Literal["actors", "serve"] = Field(
        "actors",
        description="batch job's infer stage: its own actor pool, or the Model deployment of the "
        "running Serve app serve.app_name (one GPU pool for both)",
    )

    @model_validator(mode="after")
    def _engine_runs_dtype(self) -> RuntimeConfig:
        if self.engine == "torch" and self.dtype == "int8":
            raise ValueError("dtype int8 runs on the onnxruntime engine: set engine onnxruntime (or auto)")
        if self.engine == "onnxruntime" and self.dtype in ("fp16", "bf16"):
            raise ValueError(f"the onnxruntime engine runs fp32 or int8, not {self.dtype}")
        return self


class ActorRange(_Strict):
    """An autoscaling actor pool: Ray Data adds actors up to `max` while work waits and resources allow."""

    min: int = Field(1, ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ActorRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class RayConfig(_Strict):
    """Where the batch job runs and how its stages share the cluster."""

    address: str | None = Field(None, description="Ray address; default: RAY_ADDRESS or a local instance")
    infer_actors: PositiveInt | ActorRange = Field(
        1,
        description="inference actor pool: a fixed size, or {min, max} for a pool that grows as "
        "(GPU) nodes join the cluster and starts as soon as `min` actors are up",
    )
    gpus_per_actor: float = Field(0, ge=0, description="GPUs each inference actor reserves (1 on GPU nodes)")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs each inference actor reserves")
    infer_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each inference actor reserves, to pin actors to a node type "
        "(e.g. {inference_node: 1} with `ray start --resources='{\"inference_node\": 1}'`)",
    )
    cpus_per_task: float = Field(0.5, gt=0, description="CPUs each encode/decode task reserves")
    docs_per_batch: int = Field(
        256, ge=1, description="documents per stage call; more = tighter length sorting"
    )
    cpu_tasks: PositiveInt | None = Field(
        None,
        description="most encode tasks at once, and apart most decode tasks; default: half the "
        "cluster's CPUs at start (the two stages share them). Each new task worker imports the "
        "tokenizer stack (~4 s of CPU), so more tasks than cores only add start-up and memory. "
        "Raise it for a CPU cluster that autoscales",
    )
    actor_node_timeout_s: float = Field(
        600,
        gt=0,
        description="fail the night when no alive node can host an inference actor for this long "
        "(lost nodes; leaves an autoscaler time to add one)",
    )

    def actor_pool(self) -> tuple[int, int]:
        """(min, max) size of the inference actor pool."""
        if isinstance(self.infer_actors, int):
            return self.infer_actors, self.infer_actors
        return self.infer_actors.min, self.infer_actors.max


class InputConfig(_Strict):
    path: str = Field(
        min_length=1, description="Parquet file, directory, glob or s3:// prefix; {date} is filled"
    )
    text_column: str = Field("text", description="the column to annotate")
    id_column: str = Field("id", description="a unique row id: resume and the exactly-once check use it")
    columns: list[str] | None = Field(None, description="pass-through columns; default: all")
    on_bad_file: Literal["fail", "skip"] = Field(
        "fail", description="an unreadable file fails the night, or is skipped and listed in the report"
    )
    check_unique_ids: bool = Field(
        True,
        description="read the id column up front; refuse null or repeated ids (resume needs them unique)",
    )


class OutputConfig(_Strict):
    path: str = Field(min_length=1, description="output directory or s3:// prefix; {date} is filled")
    prefix: str = Field("", description="prefix for the added columns, if input columns clash with them")
    min_rows_per_file: int = Field(10_000, ge=1, description="rows gathered before a file is written")
    max_rows_per_file: int = Field(200_000, ge=1, description="rows per file at most")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field("zstd", description="Parquet codec")
    max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="publish the night only if at most this share of its rows failed in tokenization, "
        "inference or decode (input problems such as a null text are counted apart). A broken model or "
        "tokenizer fails nearly every row and a poisoned row is rare: 1% holds back the first and lets "
        "a few of the second through. Over it, the night stays staged and the run exits 3",
    )
    max_input_error_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the same limit for rows whose text cannot be annotated (null, not a string, over "
        "runtime.max_chars); default: none, as they are the data's and get their per-row error",
    )

    @model_validator(mode="after")
    def _file_bounds(self) -> OutputConfig:
        if self.min_rows_per_file > self.max_rows_per_file:
            raise ValueError("min_rows_per_file must not exceed max_rows_per_file")
        return self


ERROR_LIMITS = ("max_error_rate", "max_input_error_rate")


class DeploymentOptions(_Strict):
    """Ray Serve knobs of one deployment; `autoscaling` replaces a fixed `num_replicas`."""

    num_replicas: int = Field(1, ge=1, description="replicas when autoscaling is not set")
    autoscaling: dict[str, Any] | None = Field(
        None, description="Ray Serve autoscaling_config, e.g. {min_replicas: 1, max_replicas: 4}"
    )
    num_cpus: float = Field(1, ge=0, description="CPUs each replica reserves (ingress default 0.5)")
    num_gpus: float = Field(0, ge=0, description="GPUs each replica reserves (1 for a GPU model replica)")
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests a replica works on at once (ingress 256, model 128 by default)"
    )
    max_queued_requests: int = Field(
        512,
        ge=-1,
        description="requests waiting for a replica (ingress 1024); -1: unbounded; beyond it 503/429",
    )


# Each deployment's defaults where they differ from DeploymentOptions': the ingress is light
# (parsing, tokenizing) and takes many requests; the model holds the weights.
DEPLOYMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "ingress": {"num_cpus": 0.5, "max_ongoing_requests": 256, "max_queued_requests": 1024},
    "model": {"num_cpus": 1, "max_ongoing_requests": 128},
}

MODEL_DEPLOYMENT = "Model"  # the Serve deployment that holds the weights (the batch job may borrow it)


class ServeConfig(_Strict):
    """The online API: limits, auth, batching and the two deployments."""

    host: str = Field(
        "127.0.0.1",
        description="HTTP bind address of `pipeline serve` (0.0.0.0 to serve other machines); under "
        "`serve deploy` the Serve config file's http_options decide host, port and route",
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    proxy: Literal["ray", "haproxy"] | None = Field(
        None,
        description="Serve's HTTP front. ray: its Python proxy actor. haproxy: HAProxy on the port, "
        "balancing over ingress replicas that serve HTTP themselves (faster; Linux, Ray's "
        "RAY_SERVE_ENABLE_HA_PROXY). A local instance that `pipeline serve` starts runs the one "
        "asked for; a cluster runs what its nodes were started with, and a config asking for the "
        "other is refused. Unset: ray locally, else the cluster's",
    )
    route_prefix: str = Field("/", description="URL prefix of the app's routes")
    app_name: str = Field(
        "bert-pipeline", description="Serve app name; runtime.backend serve finds the app by it"
    )
    api_keys: list[str] = Field(
        default_factory=list, description="accepted Bearer keys (prefer api_keys_env)"
    )
    api_keys_env: str = Field(
        "BERT_PIPELINE_API_KEYS", description="env var (on the serving nodes) with more comma-separated keys"
    )
    max_texts: int = Field(64, ge=1, description="texts per request")
    max_chars: int = Field(100_000, ge=1, description="characters per text")
    max_body_bytes: int = Field(10_000_000, ge=1, description="request body size; larger get 413")
    max_batch_size: int | None = Field(
        None, ge=1, description="documents per dynamic batch; default runtime.batch_size"
    )
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description="how long a request to an idle model waits for others to share its forward pass "
        "(requests that arrive while one runs always share the next)",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads in a model replica (default runtime.num_threads); it shares "
        "its node with the HTTP proxy and ingress, so fewer threads than the batch job often serve faster",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING",
        description="Serve's controller, proxy and replicas, in their log files and on the console; "
        "INFO also shows deployments starting and stopping",
    )
    access_log: bool = Field(
        False, description="a log line per request (written at INFO: needs log_level INFO or DEBUG)"
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After header of an overload answer")
    layout: Literal["split", "single"] = Field(
        "split",
        description="split: an Ingress deployment (HTTP, encode, decode; serve.ingress) calls the "
        "Model deployment (forward passes; serve.model) through a handle, and each scales on its own. "
        "single: one deployment does both in each replica, with serve.model's resources and "
        "replicas: no hop between processes per request, for one machine or small deployments "
        "(runtime.backend serve needs split)",
    )
    backpressure_status: Literal[503, 429] = Field(503, description="status of an overload answer")
    ingress: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(**DEPLOYMENT_DEFAULTS["ingress"])
    )
    model: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(**DEPLOYMENT_DEFAULTS["model"])
    )

    @model_validator(mode="before")
    @classmethod
    def _deployment_defaults(cls, data: Any) -> Any:
        """A section that sets some keys keeps its deployment's defaults for the others:
        `serve.model.num_gpus=1` must not reset the model's 128 ongoing requests to 64."""
        if not isinstance(data, dict):
            return data
        return {
            **data,
            **{
                name: {**defaults, **data[name]}
                for name, defaults in DEPLOYMENT_DEFAULTS.items()
                if isinstance(data.get(name), dict)
            },
        }


class PipelineConfig(_Strict):
    models: ModelsConfig
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    s3: S3Options = Field(default_factory=S3Options)
    ray: RayConfig = Field(default_factory=RayConfig)
    input: InputConfig | None = None
    output: OutputConfig | None = None
    serve: ServeConfig = Field(default_factory=ServeConfig)
    cache_dir: str | None = Field(
        None, description="model cache; default $BERT_PIPELINE_CACHE, else ~/.cache/bert-pipeline"
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
        data = apply_overrides(data, overrides)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = relative_to(data, path.resolve().parent)
        try:
            return cls.from_dict(data, overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @property
    def batch_input(self) -> InputConfig:
        """The input section, which the batch job and the int8 measurement need."""
        if self.input is None:
            raise ConfigError("this command needs the config's input section")
        return self.input

    @property
    def batch_output(self) -> OutputConfig:
        if self.output is None:
            raise ConfigError("this command needs the config's output section")
        return self.output

    def for_workers(self) -> dict[str, Any]:
        """This config as plain data for other processes and nodes, with what this process's
        environment decides resolved here (a worker node's environment may lack the variable).
        Keys the config does not set stay unset there too: a default that the model decides
        (an embedding model's own max_seq_length) is decided the same way in every process."""
        data = self.model_dump(mode="json", exclude_unset=True)
        data["s3"] = self.s3.resolved().model_dump(mode="json", exclude_unset=True)
        return data

    def config_hash(self) -> str:
        """Stable short hash of the effective config, recorded in outputs for lineage. The error
        limits decide whether a night is published, not what it holds: a rerun with a raised
        limit publishes the staged night it held back."""
        data = self.model_dump(mode="json", exclude={"output": set(ERROR_LIMITS)})
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_SCHEME = re.compile(r"^[A-Za-z][\w+.-]*://")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")  # a hub id: `name` or `org/name`


def relative_to(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A config file's relative paths, resolved against the file's directory (as other
    config-file tools do), so `pipeline run /path/to/config.yaml` works from any directory.

    Applies to the input and output paths, the cache dir and local model sources; a model
    source that names no existing path and reads as a hub id (`org/name`) stays a hub id.
    Values given with `--set` stay relative to the working directory.
    """
    data = json.loads(json.dumps(data))  # deep copy, plain types only

    def local(value: Any) -> bool:
        return isinstance(value, str) and bool(value) and not _SCHEME.match(value) and value[0] not in "/~"

    def resolved(value: str) -> str:
        return os.path.normpath(base / value) + ("/" if value.endswith("/") else "")

    for section in ("input", "output"):
        node = data.get(section)
        if isinstance(node, dict) and local(node.get("path")):
            node["path"] = resolved(node["path"])
    if local(data.get("cache_dir")):
        data["cache_dir"] = resolved(data["cache_dir"])
    models = data.get("models")
    for spec in models.values() if isinstance(models, dict) else ():
        source = spec.get("source") if isinstance(spec, dict) else None
        if not isinstance(source, str) or not local(source):
            continue
        hub_like = HUB_ID.match(source) and not source.startswith(".")
        if (base / source).exists() or not hub_like:
            spec["source"] = resolved(source)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML so numbers and nulls work."""
    data = json.loads(json.dumps(data))  # deep copy, plain types only
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


_UNION_TAG = re.compile(r"[\[(]|^(constrained-)?(int|float|str|bool|dict)$")
_WRONG_BRANCH = {"int_type", "int_parsing", "float_type", "string_type", "dict_type", "model_type"}


def _explain(exc: ValidationError) -> str:
    found = []
    for err in exc.errors():
        # Union members show up in the location as tags ("constrained-int", "function-after[...]").
        loc = [str(p) for p in err["loc"]]
        if len(loc) > 2 and loc[0] == "models" and loc[2] in SPECS:
            del loc[2]  # the kind a model entry was read as
        where = ".".join(p for p in loc if not _UNION_TAG.search(p)) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(err["loc"])
        elif err["type"] == "union_tag_invalid":
            msg = f"kind must be one of: {', '.join(SPECS)}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        found.append((where, msg, err["type"]))
    # In a union, "not an int" is noise when the dict branch says what is wrong, and vice versa.
    lines = [
        f"{where}: {msg}"
        for where, msg, kind in found
        if kind not in _WRONG_BRANCH
        or not any(w.startswith(where) and k not in _WRONG_BRANCH for w, _, k in found)
    ]
    return "invalid config: " + "; ".join(dict.fromkeys(lines))


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds, looking inside `X | None` and `int | Range`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """` (did you mean 'batch_size'?)` for an unknown key one typo away from a known one."""
    model: type[BaseModel] | None = PipelineConfig
    parts = [str(p) for p in loc if not _UNION_TAG.search(str(p))]
    i = 0
    while i < len(parts) - 1 and model is not None:
        if model is PipelineConfig and parts[i] == "models":
            # models.<name>.<kind tag>.<key>: the tag is the spec the entry was read as
            tag = parts[i + 2] if i + 2 < len(parts) - 1 else ""
            model, i = SPECS.get(tag), i + 3
            continue
        field = model.model_fields.get(parts[i])
        model = _section_model(field.annotation) if field else None
        i += 1
    if model is None:
        return ""
    close = difflib.get_close_matches(parts[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
