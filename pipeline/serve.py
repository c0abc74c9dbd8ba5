"""The online API on Ray Serve: the batch job's encode / infer / decode behind HTTP.

    HTTP -> Ingress (CPU: limits, auth, encode, decode) -> Model (GPU: batched infer)

The Model deployment wraps the same `InferenceEngine` / `ModelRunner` as the batch job's
actors; the Ingress uses the same `Encoder` and `Decoder`. A text gets the same answer
online as in last night's output. Dynamic batching (`pipeline.batcher`) merges concurrent
requests into shared forward passes without holding a free model back; queues are bounded,
and beyond them clients get 503 (or 429) with Retry-After instead of a hang.

Every forward result names its model revision. During a rolling update an ingress can meet
a model replica of another revision: it then has that replica encode, run and decode the
texts itself (`Model.annotate`), so no answer carries another revision's labels, and each
response's `model` field names the revision that answered.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route annotations at runtime.
import asyncio
import hmac
import inspect
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, TypeVar, cast

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from ray import serve
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle

from pipeline import __version__, serve_front
from pipeline.batcher import Batcher
from pipeline.config import MODEL_DEPLOYMENT, DeploymentOptions, ModelsConfig, ModelSpec, PipelineConfig
from pipeline.decode import Decoder
from pipeline.encode import Encoded, framing_of, plain_backend, window_spans
from pipeline.engine import Engine
from pipeline.infer import InferenceEngine, Inferred
from pipeline.kinds import KINDS, kind_of, slots
from pipeline.kinds.base import HfContext, HfParameterError
from pipeline.row_errors import count_kinds
from pipeline.row_errors import kind_of as kind_of_error

log = logging.getLogger(__name__)
LIVE_S = 60.0  # /v1/models lists the revisions that answered within this many seconds


# -- request / response schema (also what /docs shows) --------------------------------------
class AnnotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str | None] = Field(
        min_length=1, description="texts to annotate; null gives a per-item error"
    )
    models: list[str] | None = Field(
        None,
        min_length=1,
        description="run only these configured models (by name, see GET /v1/models); default: all "
        "the endpoint's models. The others' fields come back null",
    )


ANNOTATE_SHAPE = '{"texts": ["...", ...], "models": [...] optional}'
EMBEDDINGS_SHAPE = (
    '{"model": "<embedding model>", "input": "..." or ["...", ...], "encoding_format": "float" or "base64"}'
)


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request (https://platform.openai.com/docs/api-reference/embeddings)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a configured embedding model's name (GET /v1/models)")
    input: str | list[str] = Field(description="a text or a list of texts (token arrays are not taken)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="if given, must be the model's own")
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _some(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one text")
        return value


class HfRequest(BaseModel):
    """The Hugging Face Inference API's request: `inputs` and the task's `parameters`. Clients
    send feature-extraction's parameters at the top level, as text-embeddings-inference takes
    them (`{"inputs", "normalize", ...}`): any other top-level key is read as a parameter."""

    model_config = ConfigDict(extra="allow")

    inputs: str | list[str] = Field(description="a text or a list of texts")
    parameters: dict[str, Any] | None = Field(
        None, description="the task's parameters (see /docs of the task)"
    )
    options: dict[str, Any] | None = Field(None, description="the hosted API's options; accepted and ignored")

    @field_validator("inputs")
    @classmethod
    def _some(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one text")
        return value


HF_SHAPE = '{"inputs": "..." or ["...", ...], "parameters": {...} optional}'
Parsed = TypeVar("Parsed", AnnotateRequest, EmbeddingsRequest, HfRequest)


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as OpenAI sends it: floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        import base64

        import numpy as np

        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def endpoints() -> dict[str, str]:
    """{route under /v1/: kind} of the registered kinds (`/v1/annotate` runs them all)."""
    return {kind.endpoint: kind.name for kind in KINDS.values()}


def result_model() -> type[BaseModel]:
    """One text's result, the same fields and values as one row of the batch output: every
    registered kind's fields under its default names (other model names add theirs, named as
    their output columns: `{name}_label`, `{name}_entities`, ...), then `error`."""
    fields: dict[str, Any] = {}
    for kind in KINDS.values():
        fields.update(kind.online_fields())
    fields["error"] = (str | None, None)
    return create_model("Result", __config__=ConfigDict(extra="allow"), **fields)


Result = result_model()


class AnnotateResponse(BaseModel):
    results: list[Result]  # type: ignore[valid-type]  # built from the registered kinds
    model: dict[str, Any] = Field(
        description="per model that ran: kind, source, the revision that answered, its labels"
    )


class ErrorResponse(BaseModel):
    detail: str


api = FastAPI(
    title="bert-pipeline",
    version=__version__,
    description="BERT topic classification and NER; same models and answers as the nightly batch job.",
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 503)
}


def _openapi() -> dict[str, Any]:
    """FastAPI's schema with `/v1/{endpoint}` spelled out as each registered kind's route."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        generic = spec["paths"].pop("/v1/{endpoint}", None)
        for endpoint, kind in endpoints().items():
            if generic is not None:
                operation = json.loads(json.dumps(generic["post"]))
                operation["parameters"] = [
                    p for p in operation.get("parameters", []) if p["name"] != "endpoint"
                ]
                operation["summary"] = f"{kind} models only"
                operation["operationId"] = f"{endpoint}_v1"
                spec["paths"][f"/v1/{endpoint}"] = {"post": operation}
        api.openapi_schema = spec
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema


def _body(shape: type[BaseModel]) -> dict[str, Any]:
    """The request body /docs shows (routes read and check the body themselves)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": shape.model_json_schema()}},
        }
    }


_BODY = _body(AnnotateRequest)


class HttpError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers or {}


def _error(err: HttpError, openai: bool = False, hf: bool = False) -> JSONResponse:
    """`{"detail": ...}`; on OpenAI's routes also `{"error": {"message", "type", ...}}`, on
    Hugging Face's `{"error": "..."}`: the shapes their clients read."""
    body: dict[str, Any] = {"detail": err.detail}
    if hf:
        body["error"] = err.detail
    if openai:
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        if err.status == 401:
            kind = "authentication_error"
        body["error"] = {"message": err.detail, "type": kind, "param": None, "code": str(err.status)}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def api_keys(cfg: PipelineConfig) -> list[str]:
    env = [k.strip() for k in os.environ.get(cfg.serve.api_keys_env, "").split(",") if k.strip()]
    return list(cfg.serve.api_keys) + env


# -- model deployment -----------------------------------------------------------------------
class Model:
    """Holds the weights; merges concurrent requests into shared forward passes."""

    def __init__(self, config: dict[str, Any]) -> None:
        import torch
        from ray.serve.metrics import Counter as MetricCounter
        from ray.serve.metrics import Histogram

        cfg = PipelineConfig.model_validate(config)
        threads = cfg.serve.num_threads or cfg.runtime.num_threads
        if threads:
            torch.set_num_threads(threads)
        self.built = built = Engine.build(cfg)
        self.models = built.models
        self.engine: InferenceEngine = built.runner
        self.max_batch = cfg.serve.max_batch_size or cfg.runtime.batch_size
        self._lock = asyncio.Lock()  # one forward pass at a time on this replica
        self._batcher: Batcher[Encoded, Inferred] = Batcher(
            self._batch, self.max_batch, wait_s=cfg.serve.batch_wait_timeout_s
        )
        self.batch_sizes: Counter[int] = Counter()
        self._batch_hist = Histogram(
            "bert_pipeline_batch_documents",
            description="documents per dynamic batch (forward pass group) on the model deployment",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
        )
        self._batches = MetricCounter("bert_pipeline_batches_total", description="dynamic batches run")
        self.encoder, self.decoder, self.described = built.encoder, built.decoder, built.describe()
        self._probe = built.encoder.encode(["health check"])
        device = next(iter(self.engine.runners.values())).device
        dtypes = sorted({lm.runs_as for lm in self.models.values() if lm.runs_as})
        self.device = f"{device} {'/'.join(dtypes)}"

    async def _batch(self, docs: list[Encoded]) -> list[Inferred]:
        self._record(len(docs))
        return await self._run(docs)

    async def _run(self, docs: list[Encoded]) -> list[Inferred]:
        async with self._lock:
            return await asyncio.to_thread(self.engine.infer, docs)

    async def run_batch(self, docs: list[Encoded]) -> tuple[list[Inferred], dict[str, float]]:
        """The batch job's infer stage (runtime.backend: serve): one chunk, with its own counters.

        Takes the same lock as online requests, so they interleave chunk by chunk.
        """
        async with self._lock:
            before = self.engine.stats()
            out = await asyncio.to_thread(self.engine.infer, docs)
            counts = self.engine.stats().since(before)
        self._record(len(docs))
        return out, counts

    async def annotate(self, texts: list[str | None], names: list[str]) -> tuple[list[dict], dict[str, Any]]:
        """Encode, infer and decode here, with this replica's own tokenizers and label maps.

        The ingress asks for this when the forward pass came from a model revision other than
        the one it holds (a rollout under way): the answer is then this revision's, whole.
        """
        docs = await asyncio.to_thread(self.encoder.encode, texts, names)
        self._record(len(docs))
        inferred = await self._run(docs)
        rows = await asyncio.to_thread(self.decoder.decode, texts, docs, inferred)
        return rows, {n: self.described[n] for n in names}

    def served_models(self) -> dict[str, dict[str, str]]:
        """Source and revision per model: the batch job checks them before borrowing this model."""
        return {n: {"source": m.spec.source, "revision": m.revision} for n, m in self.models.items()}

    async def __call__(self, docs: list[Encoded]) -> list[Inferred]:
        return await self._batcher.submit(docs)

    def _record(self, size: int) -> None:
        self.batch_sizes[size] += 1
        self._batch_hist.observe(size)
        self._batches.inc()

    async def check_health(self) -> None:
        """Serve calls this periodically: the model must still produce finite outputs."""
        import numpy as np

        (out,) = await self._run(self._probe)
        values = [np.asarray(v[-1] if isinstance(v, tuple) else v) for v in out.outputs.values()]
        if out.error or len(values) != len(self.models) or not all(np.isfinite(v).all() for v in values):
            raise RuntimeError(f"model health check failed: {out.error or 'non-finite output'}")

    def stats(self) -> dict[str, Any]:
        return {
            "batch_sizes": dict(self.batch_sizes),
            "engine": self.engine.stats().as_dict(),
            "device": self.device,
        }


class InProcess:
    """The Model deployment's methods called in this process (serve.layout single): `.remote()`
    returns an awaitable, as a DeploymentHandle's does, so the ingress code is the same."""

    def __init__(self, model: Model) -> None:
        self._model = model

    def remote(self, docs: list[Encoded]) -> Any:
        return self._model(docs)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._model, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return SimpleNamespace(remote=call)


# -- ingress --------------------------------------------------------------------------------
@serve.ingress(api)
class Ingress:
    """Validates, encodes and decodes on CPU; the model deployment does the forward passes."""

    def __init__(self, model: DeploymentHandle | None, config: dict[str, Any]) -> None:
        from ray.serve.metrics import Counter as MetricCounter
        from ray.serve.metrics import Histogram

        self.cfg = PipelineConfig.model_validate(config)
        # serve.layout single: the model runs in this replica, called as the handle would be
        self.local = Model(config) if model is None else None
        self.model: Any = model if self.local is None else InProcess(self.local)
        # single: the model's own tokenizers and label maps, so both halves hold one revision
        light = self.local.built if self.local is not None else Engine.build(self.cfg, weights=False)
        self.encoder, self.decoder = light.encoder, light.decoder
        self.describe = light.describe()
        self.revisions = light.revisions
        self.seen: dict[tuple[str, str], float] = {}  # (model, revision) -> when it last answered
        self.skew_answers = 0  # answers decoded by the model replica: it ran another revision
        self.kinds = {name: lm.kind for name, lm in light.models.items()}
        self.light_models = light.models
        self.columns = {slot.name: slot.columns for slot in slots(self.cfg.models)}
        self._hf_decoders: dict[tuple[str, str], tuple[Decoder, dict[str, str]]] = {}
        self._backends = {n: plain_backend(lm.facts.tokenizer) for n, lm in light.models.items()}
        self.keys = [k.encode() for k in api_keys(self.cfg)]
        self._requests = MetricCounter(
            "bert_pipeline_requests_total",
            description="HTTP requests by endpoint and status",
            tag_keys=("endpoint", "status"),  # type: ignore[arg-type]  # Ray annotates a 1-tuple; any length works
        )
        self._item_errors = MetricCounter(
            "bert_pipeline_item_errors_total",
            description="texts answered with a per-item error, by endpoint and kind (input, "
            "tokenization, inference, decode)",
            tag_keys=("endpoint", "kind"),  # type: ignore[arg-type]  # as above
        )
        self.item_errors: Counter[str] = Counter()  # by kind, for /v1/stats
        self._latency = Histogram(
            "bert_pipeline_request_seconds",
            description="request latency by endpoint",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
            tag_keys=("endpoint",),
        )

    async def check_health(self) -> None:
        """serve.layout single: this replica's own model must still produce finite outputs."""
        if self.local is not None:
            await self.local.check_health()

    # endpoints
    @api.post("/v1/annotate", response_model=AnnotateResponse, responses=_ERRORS, openapi_extra=_BODY)
    async def annotate(self, request: Request):
        """Every configured model's results for each text (or the models the request names)."""
        return await self._serve(request, "annotate")

    @api.get("/healthz")
    async def healthz(self):
        try:
            await asyncio.wait_for(self.model.stats.remote(), timeout=5)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse({"status": "unavailable", "detail": type(exc).__name__}, status_code=503)
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request):
        if denied := self._denied(request):
            return denied
        try:  # one replica's answer joins the revisions seen answering requests
            served = await asyncio.wait_for(self.model.served_models.remote(), timeout=5)
            self._saw({n: m["revision"] for n, m in served.items()})
        except Exception:  # noqa: BLE001 - the model deployment is down: say what was seen
            log.debug("/v1/models: the model deployment did not answer", exc_info=True)
        return {
            "models": self.describe,
            "serving": self._serving(),
            "version": __version__,
            "config_hash": self.cfg.config_hash(),
        }

    @api.get("/v1/stats")
    async def stats(self, request: Request):
        """Batch sizes formed by the model deployment (one replica) and engine counters."""
        if denied := self._denied(request):
            return denied
        stats = await self.model.stats.remote()
        # answers this ingress replica had decoded by the model replica (it ran another revision)
        return {
            **stats,
            "ingress": {"skew_answers": self.skew_answers, "item_errors": dict(self.item_errors)},
        }

    @api.post("/models/{name}", responses=_ERRORS, openapi_extra=_body(HfRequest))
    async def hugging_face(self, name: str, request: Request):
        """The Hugging Face Inference API for one model, in its kind's task shape
        (`InferenceClient(model=".../models/<name>")`)."""
        return await self._hf(request, name)

    @api.get("/info")
    async def info(self, request: Request):
        """Per model: kind, its Hugging Face task and route, revision, labels, max_length (dim
        for embeddings)."""
        if denied := self._denied(request):
            return denied
        models = {
            name: {
                **described,
                "task": KINDS[described["kind"]].hf_task,
                "route": f"/models/{name}" if KINDS[described["kind"]].hf_task else None,
            }
            for name, described in self.describe.items()
        }
        return {"models": models, "version": __version__, "config_hash": self.cfg.config_hash()}

    @api.post("/v1/embeddings", responses=_ERRORS, openapi_extra=_body(EmbeddingsRequest))
    async def embeddings(self, request: Request):
        """OpenAI-compatible embeddings: `OpenAI(base_url=".../v1").embeddings.create(model=, input=)`."""
        return await self._embeddings(request)

    @api.post("/v1/{endpoint}", response_model=AnnotateResponse, responses=_ERRORS, openapi_extra=_BODY)
    async def by_kind(self, endpoint: str, request: Request):
        """One kind's models only (`/v1/classify`, `/v1/ner`, ... as each kind names its
        route); the other kinds' fields are null."""
        if endpoint not in endpoints():
            routes = ", ".join(f"/v1/{e}" for e in ["annotate", *endpoints()])
            return _error(HttpError(404, f"no route /v1/{endpoint}; the routes are {routes}"))
        return await self._serve(request, endpoint)

    # internals
    async def _serve(self, request: Request, endpoint: str) -> JSONResponse:
        started = time.perf_counter()
        try:
            self._authorize(request)
            parsed = await self._parse(request, AnnotateRequest, ANNOTATE_SHAPE)
            texts = self._limit(parsed.texts)
            names = self._models(endpoint, parsed.models)
            rows, described, _ = await self._answer(texts, names, endpoint)
            response = JSONResponse({"results": rows, "model": described})
        except HttpError as err:
            response = _error(err)
        self._requests.inc(tags={"endpoint": endpoint, "status": str(response.status_code)})
        self._latency.observe(time.perf_counter() - started, tags={"endpoint": endpoint})
        return response

    async def _answer(
        self, texts: list[str | None], names: list[str], endpoint: str
    ) -> tuple[list[dict], dict[str, Any], list[Encoded]]:
        """Encode, infer and decode for the named models: rows, what answered, the encoded docs."""
        docs = await asyncio.to_thread(self.encoder.encode, texts, names)
        inferred = await self._infer(docs)
        answered = {n: r for inf in inferred for n, r in inf.revisions.items() if n in names}
        if any(self.revisions[n] != r for n, r in answered.items()):
            # another revision ran the forward pass: its replica decodes with its own labels
            rows, described = await self._call(self.model.annotate.remote(texts, names))
            self.skew_answers += 1
        else:
            rows = await asyncio.to_thread(self.decoder.decode, texts, docs, inferred)
            described = {n: self.describe[n] for n in names}
        self._saw({n: d["revision"] for n, d in described.items()})
        self._count_errors(endpoint, [row["error"] for row in rows])
        return rows, described, docs

    async def _embeddings(self, request: Request) -> JSONResponse:
        """OpenAI's embeddings API over one configured embedding model."""
        started = time.perf_counter()
        endpoint = "embeddings"
        try:
            self._authorize(request)
            parsed = await self._parse(request, EmbeddingsRequest, EMBEDDINGS_SHAPE)
            name = self._embedding_model(parsed)
            texts: list[str | None] = [parsed.input] if isinstance(parsed.input, str) else list(parsed.input)
            rows, described, docs = await self._answer(self._limit(texts), [name], endpoint)
            column = self.columns[name]["embedding"]
            for i, row in enumerate(rows):
                if row["error"] is not None:
                    status = 400 if kind_of_error(row["error"]) == "input" else 500
                    raise HttpError(status, f"input[{i}]: {row['error']}")
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _encoded(row[column], parsed.encoding_format),
                }
                for i, row in enumerate(rows)
            ]
            tokens = sum(self._tokens(name, doc) for doc in docs)
            response = JSONResponse(
                {
                    "object": "list",
                    "data": data,
                    "model": name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
            self._saw({name: described[name]["revision"]})
        except HttpError as err:
            response = _error(err, openai=True)
        self._requests.inc(tags={"endpoint": endpoint, "status": str(response.status_code)})
        self._latency.observe(time.perf_counter() - started, tags={"endpoint": endpoint})
        return response

    async def _hf(self, request: Request, name: str) -> JSONResponse:
        started = time.perf_counter()
        endpoint = "models"
        try:
            self._authorize(request)
            parsed = await self._parse(request, HfRequest, HF_SHAPE)
            lm = self.light_models.get(name)
            if lm is None:
                raise HttpError(404, f"no model {name!r}; the models are {sorted(self.light_models)}")
            kind = kind_of(lm.spec)
            if kind.hf_task is None:
                raise HttpError(400, f"{name} is a {kind.name} model, which has no Hugging Face task shape")
            try:
                spec = kind.hf_spec(lm, {**(parsed.model_extra or {}), **(parsed.parameters or {})})
            except HfParameterError as exc:
                raise HttpError(exc.status, f"parameters: {exc}") from None
            one = isinstance(parsed.inputs, str)
            texts = self._limit(
                [parsed.inputs] if isinstance(parsed.inputs, str) else list[str | None](parsed.inputs)
            )
            docs = await asyncio.to_thread(self.encoder.encode, texts, [name])
            inferred = await self._infer(docs)
            if any(inf.revisions.get(name, self.revisions[name]) != self.revisions[name] for inf in inferred):
                retry = {"Retry-After": str(self.cfg.serve.retry_after_s)}
                raise HttpError(503, f"a new revision of {name} is rolling out; retry", retry)
            decoder, columns = self._hf_decoder(name, spec)
            rows = await asyncio.to_thread(decoder.decode, texts, docs, inferred)
            self._saw({name: self.revisions[name]})
            self._count_errors(endpoint, [row["error"] for row in rows])
            for i, row in enumerate(rows):
                if row["error"] is not None:
                    status = 400 if kind_of_error(row["error"]) == "input" else 500
                    raise HttpError(status, f"inputs[{i}]: {row['error']}")
            answers = [
                kind.hf_answer(row, columns, self._hf_context(name, str(text), doc, spec))
                for row, text, doc in zip(rows, texts, docs, strict=True)
            ]
            response = JSONResponse(answers if not one or kind.hf_nests_one else answers[0])
        except HttpError as err:
            response = _error(err, hf=True)
        self._requests.inc(tags={"endpoint": endpoint, "status": str(response.status_code)})
        self._latency.observe(time.perf_counter() - started, tags={"endpoint": endpoint})
        return response

    def _hf_decoder(self, name: str, spec: ModelSpec) -> tuple[Decoder, dict[str, str]]:
        """A decoder for one model with a request's parameters applied, and its row's columns
        (kept: a client sends the same few parameter sets again and again)."""
        key = (name, spec.model_dump_json())
        if key not in self._hf_decoders:
            models = ModelsConfig.model_validate({name: spec.model_dump()})
            decoder = Decoder({name: replace(self.light_models[name], spec=spec)}, models)
            columns = next(slot.columns for slot in decoder.slots if slot.name == name)
            if len(self._hf_decoders) >= 64:
                self._hf_decoders.pop(next(iter(self._hf_decoders)))
            self._hf_decoders[key] = (decoder, columns)
        return self._hf_decoders[key]

    def _hf_context(self, name: str, text: str, doc: Encoded, spec: ModelSpec) -> HfContext:
        backend = self._backends[name]
        stream = doc.streams.get(name)
        unk = self.light_models[name].facts.tokenizer.unk_id

        def tokens(start: int, end: int) -> list[str]:
            """The tokens in [start, end), as the pipelines read them: an unknown token is
            its text (gather_pre_entities)."""
            if stream is None:
                return []
            inside = np.flatnonzero((stream.offsets[:, 0] >= start) & (stream.offsets[:, 1] <= end))
            return [
                text[stream.offsets[k, 0] : stream.offsets[k, 1]]
                if stream.ids[k] == unk
                else backend.id_to_token(int(stream.ids[k]))
                for k in inside
            ]

        return HfContext(text, spec, tokens, backend.decoder.decode)

    def _embedding_model(self, parsed: EmbeddingsRequest) -> str:
        mine = [n for n, k in self.kinds.items() if k == "embedding"]
        if parsed.model not in self.kinds:
            raise HttpError(404, f"model {parsed.model!r} is not configured; the embedding models are {mine}")
        if parsed.model not in mine:
            raise HttpError(
                400,
                f"model {parsed.model!r} is a {self.kinds[parsed.model]} model; the embedding models are {mine}",
            )
        dim = self.describe[parsed.model].get("dim")
        if parsed.dimensions is not None and parsed.dimensions != dim:
            raise HttpError(
                400, f"dimensions: {parsed.model}'s vectors have {dim} dimensions, not {parsed.dimensions}"
            )
        return parsed.model

    def _tokens(self, name: str, doc: Encoded) -> int:
        """Tokens the model read for a document: its windows, special tokens included."""
        tokens = doc.streams.get(name)
        if tokens is None:
            return 0
        lm = self.light_models[name]
        framing = framing_of(lm.facts.tokenizer)
        first_only = kind_of(lm.spec).first_window_only(lm.spec)
        spans = window_spans(len(tokens), lm.spec.max_length, lm.spec.stride, framing.n_special, first_only)
        return int((spans[:, 1] - spans[:, 0]).sum()) + framing.n_special * len(spans)

    def _count_errors(self, endpoint: str, errors: list[str | None]) -> None:
        for kind, n in count_kinds(errors).items():
            self.item_errors[kind] += n
            self._item_errors.inc(n, tags={"endpoint": endpoint, "kind": kind})

    def _saw(self, revisions: dict[str, str]) -> None:
        now = time.monotonic()
        for name, revision in revisions.items():
            self.seen[(name, revision)] = now

    def _serving(self) -> dict[str, list[str]]:
        """Per model, the revisions that answered in the last LIVE_S seconds (several during a
        rollout), the newest first."""
        now = time.monotonic()
        self.seen = {k: t for k, t in self.seen.items() if now - t <= LIVE_S}
        out: dict[str, list[str]] = {name: [] for name in self.revisions}
        for (name, revision), _ in sorted(self.seen.items(), key=lambda kv: -kv[1]):
            out.setdefault(name, []).append(revision)
        return out

    def _denied(self, request: Request) -> JSONResponse | None:
        try:
            self._authorize(request)
        except HttpError as err:
            return _error(err)
        return None

    def _authorize(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), k) for k in self.keys):
            raise HttpError(
                401,
                "missing or invalid API key (Authorization: Bearer <key>)",
                {"WWW-Authenticate": "Bearer"},
            )

    async def _parse(self, request: Request, shape: type[Parsed], expected: str) -> Parsed:
        limit = self.cfg.serve.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"request body is {declared} bytes; serve.max_body_bytes is {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HttpError(413, f"request body is over serve.max_body_bytes ({limit})")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise HttpError(400, "request body is nested too deeply") from None
        try:
            return shape.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise HttpError(422, f"{where}: {first['msg']} (expected {expected})") from None

    def _limit(self, texts: list[str | None]) -> list[str | None]:
        s = self.cfg.serve
        if len(texts) > s.max_texts:
            raise HttpError(413, f"{len(texts)} texts in one request; serve.max_texts is {s.max_texts}")
        for i, t in enumerate(texts):
            if t is not None and len(t) > s.max_chars:
                raise HttpError(413, f"texts[{i}] has {len(t)} characters; serve.max_chars is {s.max_chars}")
        return texts

    def _models(self, endpoint: str, asked: list[str] | None) -> list[str]:
        """The models a request runs: the endpoint's kind, narrowed to the names it asks for."""
        kind = endpoints().get(endpoint)  # None: /v1/annotate, every kind
        mine = [n for n, k in self.kinds.items() if kind is None or k == kind]
        if asked is None:
            if not mine:
                raise HttpError(404, f"no {kind} model is configured")
            return mine
        unknown = [n for n in asked if n not in self.kinds]
        if unknown:
            raise HttpError(422, f"models: unknown model(s) {unknown}; configured: {sorted(self.kinds)}")
        wrong = [n for n in asked if n not in mine]
        if wrong:
            raise HttpError(422, f"models: {wrong} are not {kind} models; use /v1/annotate")
        return list(dict.fromkeys(asked))

    async def _infer(self, docs: list[Encoded]) -> list[Inferred]:
        return await self._call(self.model.remote(docs))

    async def _call(self, response: Any) -> Any:
        """Await a model deployment call; a full queue or a lost replica becomes a clear 503/429."""
        from ray.serve.exceptions import BackPressureError

        retry = {"Retry-After": str(self.cfg.serve.retry_after_s)}
        try:
            return await response
        except BackPressureError:
            raise HttpError(
                self.cfg.serve.backpressure_status, "model queue is full; retry later", retry
            ) from None
        except Exception as exc:  # noqa: BLE001 - a replica that died mid-request, etc.
            log.warning("model call failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            raise HttpError(503, f"model unavailable ({type(exc).__name__}); retry later", retry) from None


# -- application ----------------------------------------------------------------------------
def deployment_options(opts: DeploymentOptions, cfg: PipelineConfig) -> dict[str, Any]:
    """serve.deployment kwargs for one deployment section (also used by bench.serve_load)."""
    from ray.serve.config import BackpressureConfig

    out: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus},
        "max_ongoing_requests": opts.max_ongoing_requests,
        "max_queued_requests": opts.max_queued_requests,
        "backpressure_config": BackpressureConfig(
            status_code=cfg.serve.backpressure_status, retry_after_s=cfg.serve.retry_after_s
        ),
        "logging_config": logging_config(cfg),
    }
    if opts.autoscaling:
        out["autoscaling_config"] = opts.autoscaling
    else:
        out["num_replicas"] = opts.num_replicas
    return out


def logging_config(cfg: PipelineConfig) -> dict[str, Any]:
    """Serve's logging for the app and the proxy: a request's INFO lines cost CPU on every hop
    and reach the console through the driver, so they are off unless asked for."""
    return {"log_level": cfg.serve.log_level, "enable_access_log": cfg.serve.access_log}


def build_app(cfg: PipelineConfig):
    """The Serve application for a config: Ingress bound to a Model deployment (serve.layout
    split), or one deployment that is both (single)."""
    conf = cfg.for_workers()
    # with **options, serve.deployment's overloads read as the decorator-factory form
    model = cast(
        Deployment, serve.deployment(Model, name=MODEL_DEPLOYMENT, **deployment_options(cfg.serve.model, cfg))
    )
    if cfg.serve.layout == "single":  # the ingress holds the model: serve.model's resources
        single = cast(
            Deployment, serve.deployment(Ingress, name="Ingress", **deployment_options(cfg.serve.model, cfg))
        )
        return single.bind(None, conf)
    ingress = cast(
        Deployment, serve.deployment(Ingress, name="Ingress", **deployment_options(cfg.serve.ingress, cfg))
    )
    return ingress.bind(model.bind(conf), conf)


def app_builder(args: dict[str, Any]):
    """For `serve run` / `serve deploy` config files: args {config: path, set: [key=value, ...]}.
    A relative path is read against the current directory, else against the checkout this
    package runs from: `serve deploy` builds the app in a Ray worker's directory, not the caller's."""
    path = Path(args["config"])
    if not path.is_absolute() and not path.exists():
        checkout = Path(__file__).resolve().parents[1] / path
        path = checkout if checkout.exists() else path
    return build_app(PipelineConfig.from_yaml(path, args.get("set") or []))


def start(cfg: PipelineConfig, *, blocking: bool = False) -> str:
    """Deploy on the current Ray cluster (local if none); returns the base URL."""
    logging.getLogger("ray.serve").setLevel(cfg.serve.log_level)  # this process's Serve lines too
    try:
        serve.start(
            http_options={"host": cfg.serve.host, "port": cfg.serve.port}, logging_config=logging_config(cfg)
        )
    except Exception as exc:
        if why := serve_front.start_failure(exc):
            raise serve_front.FrontError(why) from None
        raise
    front = serve_front.check(cfg.serve.proxy)
    serve.run(build_app(cfg), name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix, blocking=False)
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
    if blocking:
        print(
            f"serving on {url} (docs: {url}/docs; HTTP front: {front}); Ctrl-C or SIGTERM to stop", flush=True
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (pipeline.cli.Stopped)
            after = delete_within(cfg.serve.app_name, STOP_TIMEOUT_S)
            raise ServeStopped(getattr(stop, "signum", signal.SIGINT), after) from None
    return url


STOP_TIMEOUT_S = 30.0


class ServeStopped(KeyboardInterrupt):
    """A stopped server; `after` says what became of its app (the stop's last line)."""

    def __init__(self, signum: int, after: str) -> None:
        super().__init__(after)
        self.signum = signum
        self.after = after


def delete_within(app: str, timeout_s: float) -> str:
    """Delete the app, giving up after `timeout_s`: a stop must end even when the cluster is
    going down at the same time (systemd sends SIGTERM to every process of the unit, the local
    Ray's raylet included, and a delete then waits on it forever). Returns what became of the
    app, for the stop's last line: it must not claim a deletion it did not see."""
    done = threading.Event()

    def delete() -> None:
        try:
            serve.delete(app)
            done.set()
        except Exception as exc:  # noqa: BLE001 - reported below as not confirmed
            log.warning("deleting the app %s failed: %s", app, exc)

    threading.Thread(target=delete, name="serve-delete", daemon=True).start()
    if done.wait(timeout_s):
        return "the app was deleted"
    return f"the app was not confirmed deleted within {timeout_s:.0f} s (is the cluster stopping too?)"
