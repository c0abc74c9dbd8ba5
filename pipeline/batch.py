"""The nightly batch job: Parquet in, enriched Parquet out, on Ray Data; resumable and staged.

read_parquet -> encode (CPU tasks) -> infer (fixed actor pool, GPUs) -> decode (CPU tasks)
-> write_parquet into a staging prefix under Ray Data's id checkpoint -> publish + _SUCCESS.
A killed run started again with the same command resumes where it stopped; a completed
night is left alone unless --overwrite.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pipeline.cluster import cpu_tasks, ensure_ray
from pipeline.config import ERROR_LIMITS, ConfigError, PipelineConfig
from pipeline.inputs import InputError, InputFiles, discover, inspect
from pipeline.kinds import output_fields
from pipeline.placement import NoActorNodeError, PlacementWatch, StopWhenTripped, actor_needs
from pipeline.progress import ProgressLine, quiet_ray_data_console
from pipeline.progress import interval_s as progress_interval_s
from pipeline.publish import SUCCESS, Publisher
from pipeline.ray_data import Processor
from pipeline.ray_data import lineage as processor_lineage
from pipeline.reader import DoneIds, FilteredByReader, done_ids
from pipeline.row_errors import ErrorBudgetExceeded, ErrorCounts, listed, over_budget
from pipeline.startup import Phases
from pipeline.storage import StorageError, arrow_filesystem, error_chain, is_transient
from pipeline.tally import DTYPE_KEY, MODEL_KEY, UNTUNED_KEY

log = logging.getLogger(__name__)


def yesterday_utc() -> str:
    return (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()


def fill_date(path: str, date: str) -> str:
    return path.replace("{date}", date)


def lineage(cfg: PipelineConfig, date: str) -> dict[str, Any]:
    """What produced this night: recorded in every file's metadata and in the report."""
    return {**processor_lineage(cfg), "date": date}


def run(
    cfg: PipelineConfig,
    *,
    date: str | None = None,
    overwrite: bool = False,
    address: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume, or skip) one night. Returns the run report."""
    started = time.time()
    phases = Phases()
    phases.mark("run_called", started)
    if cfg.input is None or cfg.output is None:
        raise ConfigError("the batch job needs the input and output sections")
    date = date or yesterday_utc()
    in_path, out_path = fill_date(cfg.input.path, date), fill_date(cfg.output.path, date)
    in_fs, in_root = arrow_filesystem(in_path, cfg.s3)
    out_fs, out_root = arrow_filesystem(out_path, cfg.s3)
    pub = Publisher(out_fs, out_root)
    if pub.complete() and not overwrite:
        pub.tidy()
        echo(
            f"{out_path} is already complete ({SUCCESS} present): nothing to do. Use --overwrite to redo it."
        )
        return {**pub.report(), "status": "already_complete"}
    meta = lineage(cfg, date)  # checks every model, before Ray starts or anything is cleared
    phases.mark("models_checked")
    if overwrite:
        pub.clear()

    text_col, id_col = cfg.input.text_column, cfg.input.id_column
    inputs = inspect(discover(in_root, in_fs), in_fs, [text_col, id_col], cfg.input.on_bad_file, id_col)
    for skipped in inputs.skipped:
        echo(f"skipping bad input file {skipped['path']}: {skipped['reason']}")
    columns = _columns(cfg, inputs.schema.names)
    phases.mark("inputs_listed")
    counts: dict[str, Any] = {}
    if not pub.written():
        id_check = None
        if cfg.input.check_unique_ids:  # a small input's check runs while Ray starts
            from pipeline.idcheck import start_id_check

            id_check = start_id_check(inputs, in_fs, id_col, cfg.ray.cpus_per_task)
        ensure_ray(address or cfg.ray.address)
        phases.mark("ray_ready")
        if cfg.runtime.backend == "serve":  # before any work: the app must hold these very models
            from pipeline.infer_stage import check_served_models

            check_served_models(cfg, meta["models"])
        if id_check is not None:
            with quiet_ray_data_console():
                checked = id_check()
            counts["id_check_s"] = checked.seconds
            phases.mark("ids_checked")
    revisions = {name: m["revision"] for name, m in meta["models"].items()}
    resumed = pub.begin(
        {"config_hash": meta["config_hash"], "date": date, "input": in_path, "models": revisions}
    )
    if resumed:
        done = pub.checkpointed()
        echo(f"resuming the unfinished run in {out_path}: {done} of {inputs.rows} documents already written")
        counts["already_written"] = done

    if not pub.written():
        todo = inputs.rows - counts.get("already_written", 0)
        with quiet_ray_data_console():
            counts.update(_execute(cfg, inputs, in_fs, columns, meta, pub, out_fs, todo, echo))
        pub.mark_written()
    wall = time.time() - started
    first = counts.pop("first_infer_at", None)
    if first:
        counts["startup_s"] = first - started
        phases.mark("first_infer", first)
    for key in [k for k in counts if k.endswith("_at")]:  # the stages' own moments (see infer_stage)
        phases.mark(key.removesuffix("_at"), counts.pop(key))
    counts["startup"] = phases.report()
    report = _report(cfg, meta, inputs, counts, in_path, out_path, wall, resumed)
    files = pub.data_files()
    errors = night_errors(out_fs, files, id_col, f"{cfg.output.prefix}error")
    report.update(output_files=len(files), output_rows=errors.rows, **errors.as_report())
    report.update({key: getattr(cfg.output, key) for key in ERROR_LIMITS})
    expected = inputs.rows - report["skipped_rows"]
    if report["output_rows"] != expected:
        log.warning("output has %d rows but %d were expected", report["output_rows"], expected)
    refused = over_budget(errors, cfg.output.max_error_rate, cfg.output.max_input_error_rate)
    if refused:
        reason, key = refused
        report["status"] = "refused"
        held = pub.hold(report)
        raise ErrorBudgetExceeded(
            f"not published: {reason}. The night stays staged (report: {held}): after a fix, rerun "
            f"with --overwrite; to publish it as it is, rerun with --set {key}=<higher>"
        )
    pub.publish(report)
    echo(summary(report))
    return report


def _columns(cfg: PipelineConfig, available: list[str]) -> list[str]:
    """Columns to read: the pass-through ones plus id and text; refuse clashes with output names."""
    assert cfg.input is not None and cfg.output is not None
    wanted = list(cfg.input.columns) if cfg.input.columns is not None else list(available)
    for col in (cfg.input.id_column, cfg.input.text_column):
        if col not in wanted:
            wanted.append(col)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise InputError(f"input.columns names {missing}, not in the input (columns: {', '.join(available)})")
    clash = [f.name for f in output_fields(cfg.models, cfg.output.prefix) if f.name in wanted]
    if clash:
        raise InputError(
            f"input columns {clash} would be overwritten by the output; set output.prefix "
            "(e.g. --set output.prefix=pred_) or drop them with input.columns"
        )
    return wanted


def build_dataset(
    cfg: PipelineConfig,
    inputs: InputFiles,
    fs: Any,
    columns: list[str],
    meta: dict,
    tally: str | None,
    done: DoneIds | None,
    tasks: int,
):
    """The Ray Data graph, up to (not including) the write (which gets the same `tasks` cap):
    the checked Parquet reader, then the annotation processor (pipeline.ray_data).

    Three operators, each a pool that runs all the time: read+encode (CPU tasks, fused),
    infer (actor pool), decode (CPU tasks, fused with the write by `write`). Every stage
    asks for the same CPU fraction, so fusion happens and no stage can take the CPUs a
    downstream one needs: output is written, and checkpointed, while the night runs.
    """
    import ray.data

    from pipeline.reader import ParquetDocs, plan_units

    assert cfg.input is not None
    r = cfg.ray
    units = plan_units(inputs)
    source = ParquetDocs(
        units, fs, columns, inputs.schema, r.docs_per_batch, cfg.input.on_bad_file, tally, done
    )
    # One block stream per read unit: no extra split, which would keep the read from fusing.
    ds = ray.data.read_datasource(
        source, num_cpus=r.cpus_per_task, override_num_blocks=len(units), concurrency=tasks
    )
    prefix = cfg.output.prefix if cfg.output else ""
    # the reader's blocks are already docs_per_batch rows: encode takes them as they come
    return Processor(cfg, cfg.input.text_column, prefix, meta).stages(ds, tasks=tasks, tally=tally)


def _execute(cfg, inputs, in_fs, columns, meta, pub: Publisher, out_fs, todo: int, echo) -> dict[str, Any]:
    import ray
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    from pipeline.tally import start as start_tally

    assert cfg.input is not None and cfg.output is not None
    dataset_started = time.time()
    tally_name = f"bert-pipeline-tally-{uuid.uuid4().hex[:12]}"
    tally = start_tally(tally_name)
    ctx = DataContext.get_current()
    fields = (
        "checkpoint_config",
        "raise_original_map_exception",
        "write_file_retry_on_errors",
        "retried_io_errors",
        "custom_execution_callback_classes",
    )
    previous = {f: getattr(ctx, f) for f in fields}
    ctx.checkpoint_config = CheckpointConfig(
        id_column=cfg.input.id_column,
        checkpoint_path=pub.checkpoint,  # a path in out_fs (storage.S3Handler on S3): no scheme
        override_filesystem=out_fs,
        checkpoint_manager_cls=FilteredByReader,
    )
    ctx.raise_original_map_exception = True  # our errors arrive as themselves (see _our_error)
    # One retry policy, s3.max_attempts (the AWS SDK's standard mode, in every process through
    # storage.S3Handler), rather than Ray Data's ten backed-off attempts stacked on top of it,
    # which would hold a failing night for minutes per file before saying anything.
    ctx.write_file_retry_on_errors = []
    ctx.retried_io_errors = []
    r = cfg.ray
    need = actor_needs(r.cpus_per_actor, r.gpus_per_actor, r.infer_resources)
    if cfg.runtime.backend == "serve":
        need = actor_needs(r.cpus_per_task, 0, {})
    watch = PlacementWatch(need, r.actor_node_timeout_s)
    ctx.custom_execution_callback_classes = [*ctx.custom_execution_callback_classes, StopWhenTripped]
    try:
        tasks = cpu_tasks(r.cpu_tasks)  # once: decode and write must get the same cap to fuse
        done = done_ids(ctx, pub.data, out_fs)
        ds = build_dataset(cfg, inputs, in_fs, columns, meta, tally_name, done, tasks)
        compression = None if cfg.output.compression == "none" else cfg.output.compression

        def progress() -> tuple[int, int]:  # (labeled, through the model)
            counts = ray.get(tally.get.remote(), timeout=5)
            return int(counts.get("documents", 0)), int(counts.get("inferred", 0))

        with watch, ProgressLine(progress, todo, echo, progress_interval_s()):
            try:
                ds.write_parquet(
                    pub.data,
                    filesystem=out_fs,
                    min_rows_per_file=cfg.output.min_rows_per_file,
                    max_rows_per_file=cfg.output.max_rows_per_file,
                    compression=compression,
                    ray_remote_args={"num_cpus": r.cpus_per_task},  # same as decode: the two fuse
                    concurrency=tasks,
                )
            except Exception as exc:
                if watch.tripped:  # the watch stopped the run: say why, in one line
                    raise NoActorNodeError(watch.tripped) from None
                ours = _our_error(exc)
                if ours is None and is_transient(exc):  # e.g. a write that ran out of retries
                    ours = StorageError.from_exception(exc)
                if ours is None:
                    raise
                raise ours from None  # one clear line, not the remote traceback
        counts: dict[str, Any] = ray.get(tally.get.remote())
        counts.update(ray.get(tally.get_notes.remote()))
        counts["dataset_started_at"] = dataset_started
        return counts
    finally:
        for name, value in previous.items():
            setattr(ctx, name, value)
        ray.kill(tally)


def _our_error(exc: BaseException) -> Exception | None:
    """The InputError or StorageError a stage raised, out of Ray's wrappers, as one line (Ray Data
    appends retry advice to the message), or None."""
    from pipeline.revisions import ModelChanged

    ours = next((e for e in error_chain(exc) if type(e) in (InputError, StorageError, ModelChanged)), None)
    if ours is None:
        return None
    line = str(ours).split("\n", 1)[0]
    if isinstance(ours, StorageError):
        return StorageError.with_message(line, ours.operation, ours.key)
    return type(ours)(line)


def night_errors(fs: Any, files: list[str], id_col: str, err_col: str) -> ErrorCounts:
    """Rows and row errors of the whole night, read back from its output: a resumed night counts
    what its earlier runs wrote, and nothing depends on counters a lost process held. A file
    whose statistics say its error column is all null is not read past its footer."""
    import pyarrow.parquet as pq

    counts = ErrorCounts()
    for path in files:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            meta = parquet.metadata
            if err_col not in parquet.schema_arrow.names or _all_null(meta, err_col):
                counts.add(meta.num_rows, [])
                continue
            table = parquet.read(columns=[id_col, err_col])
        counts.add(table.num_rows, table.column(err_col).to_pylist(), table.column(id_col).to_pylist())
    return counts


def _all_null(meta: Any, name: str) -> bool:
    """True when every row group's statistics say the (flat) column holds only nulls."""
    leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if name not in leaves:
        return False
    column = leaves.index(name)
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(column).statistics
        if stats is None or not stats.has_null_count or stats.null_count != group.num_rows:
            return False
    return True


def _report(cfg, meta, inputs, counts, in_path, out_path, wall, resumed) -> dict[str, Any]:
    docs = int(counts.get("documents", 0))
    padded = int(counts.get("padded_tokens", 0))
    tokens = int(counts.get("tokens", 0))
    return {
        "status": "complete",
        "date": meta["date"],
        "input": in_path,
        "output": out_path,
        "resumed": resumed,
        "input_files": len(inputs.files),
        "skipped_files": inputs.skipped + list(counts.get("skipped_files", [])),
        "input_rows": inputs.rows,
        "skipped_rows": int(counts.get("skipped_rows", 0)),
        "already_written": int(counts.get("already_written", 0)),
        "documents": docs,
        "windows": int(counts.get("windows", 0)),
        "tokens": tokens,
        "padded_tokens": padded,
        "padding_efficiency": round(tokens / padded, 4) if padded else None,
        "forward_s": round(counts.get("forward_s", 0.0), 2),
        "forward_cpu_s": round(counts.get("forward_cpu_s", 0.0), 2),
        "startup_s": round(counts["startup_s"], 2) if "startup_s" in counts else None,
        # seconds from the process's start to the end of each start-up phase
        "startup": counts.get("startup"),
        "id_check_s": round(counts["id_check_s"], 2) if "id_check_s" in counts else None,
        "cpu_fallback_actors": int(counts.get("cpu_fallback_actors", 0)),
        "oom_splits": int(counts.get("oom_splits", 0)),
        "model_dtypes": model_dtypes(counts),
        # models that ran dtype auto's unmeasured default on some actor's CPU (no tune verdict)
        "untuned_models": sorted(k[len(UNTUNED_KEY) :] for k in counts if k.startswith(UNTUNED_KEY)),
        "per_model": per_model(counts),
        "wall_s": round(wall, 2),
        "docs_per_s": round(docs / wall, 2) if wall > 0 else None,
        "models": meta["models"],
        "config_hash": meta["config_hash"],
        "version": meta["version"],
    }


def per_model(counts: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{model: {windows, tokens, forward_s}} this run, from the inference actors' counters."""
    out: dict[str, dict[str, float]] = {}
    for key, value in counts.items():
        if key.startswith(MODEL_KEY):
            name, what = key[len(MODEL_KEY) :].rsplit(":", 1)
            out.setdefault(name, {})[what] = round(value, 2) if what == "forward_s" else int(value)
    return dict(sorted(out.items()))


def model_dtypes(counts: dict[str, Any]) -> dict[str, list[str]]:
    """{model: dtypes its inference actors ran in}: one each, unless nodes chose differently."""
    out: dict[str, set[str]] = {}
    for key in counts:
        if key.startswith(DTYPE_KEY):
            name, dtype = key[len(DTYPE_KEY) :].rsplit(":", 1)
            out.setdefault(name, set()).add(dtype)
    return {name: sorted(dtypes) for name, dtypes in sorted(out.items())}


def summary(report: dict[str, Any]) -> str:
    eff = report.get("padding_efficiency")
    lines = [
        f"done: {report['documents']} documents this run in {report['wall_s']}s"
        f" = {report['docs_per_s']} docs/s"
        + (
            f" (start-up until the first model batch: {report['startup_s']}s)"
            if report.get("startup_s")
            else ""
        ),
        f"  windows {report['windows']}, tokens {report['tokens']}, padded {report['padded_tokens']}"
        + (f" (padding efficiency {eff:.1%})" if eff else ""),
        f"  output: {report['output']} ({report.get('output_files', '?')} files, "
        f"{report.get('output_rows', '?')} rows; input rows {report['input_rows']})",
    ]
    phases = report.get("startup") or {}
    if "first_infer" in phases and phases.get("run_called", 99) < 30:  # a command, not a long-lived caller
        lines.append(
            "  start-up, seconds from the command: " + ", ".join(f"{k} {v}" for k, v in phases.items())
        )
    if len(report.get("per_model") or {}) > 1:
        lines.append(
            "  per model: "
            + ", ".join(
                f"{name} {m.get('windows', 0)} windows / {m.get('forward_s', 0)} s forward"
                for name, m in report["per_model"].items()
            )
        )
    if report.get("errors"):
        lines.append(
            f"  rows with errors: {report['errors']} ({report['failed_rows']} failed = "
            f"{report['error_rate']:.2%}, limit {report['max_error_rate']:.2%}; "
            f"{report['input_errors']} input problems): " + listed(report["top_errors"])
        )
    if report.get("already_written"):
        lines.append(
            f"  resumed: {report['already_written']} documents were already written by the earlier run"
        )
    mixed = {task: d for task, d in (report.get("model_dtypes") or {}).items() if len(d) > 1}
    if mixed:
        lines.append(
            "  warning: models ran in more than one dtype on different actors: "
            + ", ".join(f"{task} {'/'.join(d)}" for task, d in mixed.items())
            + " (dtype auto follows each CPU model's tuned verdict: set runtime.engine and runtime.dtype outright for one)"
        )
    if report.get("untuned_models"):
        lines.append(
            f"  untuned: {', '.join(report['untuned_models'])} ran dtype auto's unmeasured default; "
            "`pipeline models tune CONFIG` measures this CPU's variants once, and auto then runs "
            "the fastest that holds the quality gate"
        )
    if report.get("oom_splits"):
        lines.append(
            f"  {report['oom_splits']} micro-batch(es) ran out of memory and were split (no row lost): "
            "lower runtime.max_batch_tokens to avoid the retries"
        )
    if report["skipped_files"]:
        lines.append(
            f"  skipped {len(report['skipped_files'])} bad input file(s)"
            + (f", {report['skipped_rows']} rows" if report.get("skipped_rows") else "")
            + ": see _report.json"
        )
    return "\n".join(lines)
