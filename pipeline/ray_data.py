"""The annotation step for any Ray Data pipeline: `build_processor(config)(ds)`.

Like `ray.data.llm`'s processors, it maps a Dataset with a text column to the same Dataset with
every configured model's output columns and `error` added, lazily: encode (CPU tasks), infer
(the actor pool, its GPUs and token budget), decode (CPU tasks), streaming, nothing held on the
driver. `pipeline run` is this processor between its checked Parquet reader and its
exactly-once publisher; a Dataset of your own (JSON lines, a table, a SQL source) gets the same
stages, the same rows and the same lineage, and goes wherever you write it.

    from pipeline.ray_data import build_processor
    ds = ray.data.read_json("s3://bucket/dump/")
    ds = build_processor("examples/local.yaml")(ds)
    ds.write_parquet("s3://bucket/labeled/")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.config import PipelineConfig
from pipeline.inputs import InputError
from pipeline.kinds import kind_of, output_fields
from pipeline.models import model_revisions


def lineage(cfg: PipelineConfig) -> dict[str, Any]:
    """What produces this output (every model's source, revision and what its kind records, the
    config hash, the version): in every file's metadata. Reading the models' files (not their
    weights) here refuses, in one line and before any work, a model that cannot work."""
    from pipeline.engine import check_models

    models = model_revisions(cfg)
    for name, lm in check_models(cfg).items():
        models[name].update({k: v for k, v in kind_of(lm.spec).describe(lm).items() if v is not None})
    return {"models": models, "config_hash": cfg.config_hash(), "version": __version__}


@dataclass
class Processor:
    """Adds the configured models' columns to a Dataset; see `build_processor`."""

    cfg: PipelineConfig
    text_column: str
    prefix: str
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self, columns: list[str]) -> None:
        """The text column is there and no output column would overwrite an input column."""
        if self.text_column not in columns:
            raise InputError(
                f"the dataset has no text column {self.text_column!r} (columns: {', '.join(columns)}); "
                "set input.text_column"
            )
        clash = [f.name for f in output_fields(self.cfg.models, self.prefix) if f.name in columns]
        if clash:
            raise InputError(
                f"input columns {clash} would be overwritten by the output; set output.prefix "
                "(e.g. --set output.prefix=pred_) or drop them"
            )

    def __call__(self, ds: Any) -> Any:
        from pipeline.cluster import cpu_tasks

        schema = ds.schema()  # a Dataset of files reads one block's footer or first lines for this
        if schema is not None:
            self.check(list(schema.names))
        return self.stages(
            ds, tasks=cpu_tasks(self.cfg.ray.cpu_tasks), encode_batch_size=self.cfg.ray.docs_per_batch
        )

    def stages(
        self, ds: Any, *, tasks: int, tally: str | None = None, encode_batch_size: int | None = None
    ) -> Any:
        """encode -> infer -> decode on `ds`. Each CPU stage asks for the same CPU fraction and
        task cap (`tasks`), so encode fuses with what comes before it and decode with what comes
        after (the batch job's read and write), and no stage takes the CPUs another needs."""
        import ray.data

        from pipeline.infer_stage import infer_stage
        from pipeline.stages import decode_batch, encode_batch

        r = self.cfg.ray
        conf = self.cfg.for_workers()
        expected = self.meta["models"]
        ds = ds.map_batches(
            encode_batch,
            batch_format="pyarrow",
            batch_size=encode_batch_size,  # None: the blocks as they come (the job's reader cuts them)
            num_cpus=r.cpus_per_task,
            compute=ray.data.TaskPoolStrategy(size=tasks),
            fn_kwargs={"config": conf, "text_column": self.text_column, "expected": expected},
        )
        stage = infer_stage(self.cfg)
        low, high = r.actor_pool()
        ds = ds.map_batches(
            stage["fn"],
            batch_format="pyarrow",
            batch_size=r.docs_per_batch,
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
            num_cpus=stage["num_cpus"],
            num_gpus=stage["num_gpus"],
            resources=stage["resources"],
            fn_constructor_kwargs={"config": conf, "tally": tally, "expected": expected},
        )
        return ds.map_batches(
            decode_batch,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=r.cpus_per_task,
            compute=ray.data.TaskPoolStrategy(size=tasks),
            fn_kwargs={
                "config": conf,
                "text_column": self.text_column,
                "prefix": self.prefix,
                "metadata": json.dumps(self.meta),
                "tally": tally,
            },
        )


def build_processor(
    config: PipelineConfig | str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> Processor:
    """The annotation step for a config (a PipelineConfig, or a YAML path and `--set`-style
    overrides). The text column is `input.text_column` (default `text`), the columns it adds
    carry `output.prefix`; an id column is not needed. Models are checked here, on the driver."""
    cfg = config if isinstance(config, PipelineConfig) else PipelineConfig.from_yaml(config, overrides)
    text = cfg.input.text_column if cfg.input is not None else "text"
    prefix = cfg.output.prefix if cfg.output is not None else ""
    return Processor(cfg, text, prefix, lineage(cfg))
