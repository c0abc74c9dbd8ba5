"""The batch job's infer stage: its own actor pool, or the running Serve app's Model deployment.

`InferActor` holds the weights in a pool of (GPU) actors. With `runtime.backend: serve`,
`ServeInfer` sends each block's encoded windows to the Serve app instead, so one GPU pool
serves the online API and the nightly job; the job still encodes and decodes on its own CPU
workers. Chunks of one micro-batch let online requests interleave with the job instead of
waiting behind a whole block. Before any work the driver checks that the app is running and
serves the very models (same revisions) that the job's config names, so lineage is true.
`infer_stage` chooses between the two, in one place.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Any

import pyarrow as pa

from pipeline.columns import columns_to_encoded
from pipeline.config import MODEL_DEPLOYMENT, ConfigError, PipelineConfig
from pipeline.engine import Engine
from pipeline.infer import InferenceEngine
from pipeline.revisions import check_revisions
from pipeline.stages import light_engine, with_inferred
from pipeline.startup import process_started_at
from pipeline.tally import DTYPE_KEY, MODEL_KEY, UNTUNED_KEY, report

log = logging.getLogger(__name__)
BACKPRESSURE_WAIT_S = 600  # a nightly job waits out a busy day-time peak this long, then fails


def infer_stage(cfg: PipelineConfig) -> dict[str, Any]:
    """map_batches arguments of the infer stage for this config (the pool size is the caller's)."""
    r = cfg.ray
    if cfg.runtime.backend == "serve":  # the running Serve app's Model deployment does the work
        return {"fn": ServeInfer, "num_cpus": r.cpus_per_task, "num_gpus": None, "resources": None}
    return {
        "fn": InferActor,
        "num_cpus": r.cpus_per_actor,
        "num_gpus": r.gpus_per_actor or None,
        "resources": r.infer_resources or None,
    }


class InferActor:
    """GPU (or CPU) actor: holds the weights and runs the shared ModelRunner over each batch."""

    def __init__(
        self,
        config: dict[str, Any],
        tally: str | None = None,
        expected: dict[str, dict[str, str]] | None = None,
    ) -> None:
        entered = time.time()
        import ray
        import torch

        cfg = PipelineConfig.model_validate(config)
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.tally = tally
        self.started = False
        if ray.get_gpu_ids() and not torch.cuda.is_available():
            log.warning("this actor was given a GPU but CUDA is not available here; running on CPU")
            report(tally, {"cpu_fallback_actors": 1})
        built = Engine.build(cfg)
        # an actor started mid-night (a lost node, a growing pool) loads the source as it is
        # now: if it changed since the night began, its first batch stops the night (a failing
        # constructor would only be restarted) rather than mix two revisions
        self.expected = expected or {}
        self.models = built.models
        self.group_of = built.encoder.group_of
        self.engine: InferenceEngine = built.runner
        # what each model runs in on this actor (dtype auto may differ between nodes), and when
        # the first actor's process started and was ready (the run report's start-up phases)
        ran = {f"{DTYPE_KEY}{name}:{lm.runs_as}": 1 for name, lm in self.models.items()}
        ran |= {f"{UNTUNED_KEY}{name}": 1 for name, lm in self.models.items() if lm.untuned}
        moments = {"first_actor_process_at": process_started_at(), "first_actor_init_at": entered}
        report(tally, ran | moments | {"first_actor_ready_at": time.time()})
        log.info(
            "inference actor ready on %s (%s; pid %d)",
            next(iter(self.engine.runners.values())).device,
            ", ".join(f"{name} {lm.runs_as}" for name, lm in self.models.items()),
            os.getpid(),
        )

    def __call__(self, table: pa.Table) -> pa.Table:
        check_revisions(self.expected, self.engine.revisions, "the model source")
        self.started = mark_first_batch(self.tally, self.started)
        before = self.engine.stats()
        per_model = {name: replace(runner.stats) for name, runner in self.engine.runners.items()}
        docs = columns_to_encoded(table, self.group_of)
        results = self.engine.infer(docs)
        report_infer(self.tally, self.engine.stats().since(before), len(docs))
        report(
            self.tally,
            {
                f"{MODEL_KEY}{name}:{what}": delta[field]
                for name, runner in self.engine.runners.items()
                for delta in [runner.stats.since(per_model[name])]
                for what, field in (
                    ("windows", "sequences"),
                    ("tokens", "real_tokens"),
                    ("forward_s", "forward_s"),
                )
            },
        )
        return with_inferred(table, results, self.models)


def mark_first_batch(tally: str | None, started: bool) -> bool:
    """Tell the run's tally when the model got its first batch (start-up time in the report)."""
    if tally and not started:
        report(tally, {"first_infer_at": time.time()})
    return True


def report_infer(tally: str | None, delta: dict[str, float], docs: int) -> None:
    report(
        tally,
        {
            "inferred": docs,  # documents the models ran on (the progress line's "through the model")
            "windows": delta["sequences"],
            "tokens": delta["real_tokens"],
            "padded_tokens": delta["padded_tokens"],
            "forward_s": delta["forward_s"],
            "forward_cpu_s": delta["forward_cpu_s"],
            "oom_splits": delta["oom_splits"],
        },
    )


def model_handle(cfg: PipelineConfig):
    from ray import serve

    return serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=cfg.serve.app_name)


def check_served_models(cfg: PipelineConfig, expected: dict[str, dict[str, str]]) -> None:
    """Refuse to start unless the Serve app runs and holds exactly the configured models."""
    app = cfg.serve.app_name
    try:
        served = model_handle(cfg).served_models.remote().result(timeout_s=60)
    except Exception as exc:  # noqa: BLE001 - any failure here means: not usable
        raise ConfigError(
            f"runtime.backend: serve needs the Serve app '{app}' running on this Ray cluster "
            f"(pipeline serve CONFIG, or serve deploy jobs/serve.yaml; serve.app_name names it) "
            f"with serve.layout split (a single-layout app has no Model deployment to borrow): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for name, want in expected.items():
        got = served.get(name)
        if got is None or got["revision"] != want["revision"]:
            have = f"{got['source']} ({got['revision']})" if got else "no such model"
            raise ConfigError(
                f"the Serve app '{app}' serves {name} = {have}, but this job's config names "
                f"{want['source']} ({want['revision']}): point both at the same model, or use "
                "runtime.backend: actors"
            )


class ServeInfer:
    """Ray Data callable: sends each block's encoded windows to the Model deployment."""

    def __init__(
        self,
        config: dict[str, Any],
        tally: str | None = None,
        expected: dict[str, dict[str, str]] | None = None,
    ) -> None:
        cfg = PipelineConfig.model_validate(config)
        self.handle = model_handle(cfg)
        self.expected = expected or {}
        self.app = f"the Serve app '{cfg.serve.app_name}'"
        self.chunk = cfg.serve.max_batch_size or cfg.runtime.batch_size
        light = light_engine(config)  # tokenizers and label maps: how the columns are laid out
        self.models, self.group_of = light.models, light.encoder.group_of
        self.retry_s = cfg.serve.retry_after_s
        self.tally = tally
        self.started = False

    def __call__(self, table: pa.Table) -> pa.Table:
        self.started = mark_first_batch(self.tally, self.started)
        docs = columns_to_encoded(table, self.group_of)
        chunks = [docs[i : i + self.chunk] for i in range(0, len(docs), self.chunk)]
        pending = {i: self.handle.run_batch.remote(c) for i, c in enumerate(chunks)}
        results: dict[int, list] = {}
        deadline = time.monotonic() + BACKPRESSURE_WAIT_S
        while pending:
            i, response = next(iter(pending.items()))
            try:
                out, counts = response.result()
            except Exception as exc:
                if not _is_backpressure(exc) or time.monotonic() > deadline:
                    raise
                log.info("Serve model deployment is full; retrying a chunk in %ss", self.retry_s)
                time.sleep(self.retry_s)
                pending[i] = self.handle.run_batch.remote(chunks[i])
                continue
            del pending[i]
            if out:  # a chunk runs on one replica: one set of revisions
                check_revisions(self.expected, out[0].revisions, self.app)
            results[i] = out
            report_infer(self.tally, counts, len(chunks[i]))
        return with_inferred(table, [r for i in range(len(chunks)) for r in results[i]], self.models)


def _is_backpressure(exc: BaseException) -> bool:
    """The Model deployment's queue is full (max_queued_requests): wait and send again."""
    from ray.serve.exceptions import BackPressureError

    return isinstance(exc, BackPressureError)
