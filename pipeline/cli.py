"""The `pipeline` command: annotate, run, submit, serve, models, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, PipelineConfig


def _load_config(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig.from_yaml(args.config, args.set or [])


def cmd_annotate(args: argparse.Namespace) -> int:
    from pipeline.annotator import Annotator

    cfg = _load_config(args)
    texts = list(args.texts)
    if not texts or texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin]
    ann = Annotator(cfg)
    for row in ann.annotate(texts):
        print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline import batch
    from pipeline.inputs import InputError
    from pipeline.placement import NoActorNodeError
    from pipeline.publish import OutputError
    from pipeline.revisions import ModelChanged
    from pipeline.row_errors import ErrorBudgetExceeded
    from pipeline.storage import StorageError

    cfg = _load_config(args)
    try:
        report = batch.run(cfg, date=args.date, overwrite=args.overwrite, address=args.address)
    except (InputError, OutputError, ModelChanged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, NoActorNodeError) as exc:  # worth a retry later: the run resumes
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ErrorBudgetExceeded as exc:  # ran to the end, but too many rows failed to publish
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.show and report.get("status") == "complete":
        _show_rows(cfg, report, args.show)
    return 0


def _show_rows(cfg: PipelineConfig, report: dict, n: int) -> None:
    """Print a few annotated rows of the output so a person can judge it at a glance."""
    import pyarrow.parquet as pq

    from pipeline.publish import Publisher
    from pipeline.storage import arrow_filesystem

    fs, root = arrow_filesystem(report["output"], cfg.s3)
    files = Publisher(fs, root).data_files()
    if not files:
        return
    with fs.open_input_file(files[0]) as f:
        table = pq.read_table(f).slice(0, n)
    try:
        rows = table.to_pylist()
    except UnicodeDecodeError:  # an input column with bytes that are not UTF-8, passed through
        print(f"\n(the first rows of {files[0]} hold text that is not UTF-8: not shown)")
        return
    from pipeline.kinds import slots

    text_col, prefix = cfg.batch_input.text_column, cfg.batch_output.prefix
    shown = [slot for slot in slots(cfg.models) if slot.spec is not None]
    print(f"\nfirst {len(rows)} rows of {files[0]}:")
    for row in rows:
        text = (row.get(text_col) or "").replace("\n", " ")
        print(f"- {text[:90]!r}{'...' if len(text) > 90 else ''}")
        parts = [_shown(slot, row, prefix) for slot in shown]
        if row.get(f"{prefix}error"):
            parts.append(f"error={row[f'{prefix}error']}")
        print("    " + "  ".join(parts))


def _shown(slot, row: dict, prefix: str) -> str:
    """One model's answer for a row, short: `label=world (0.93)`, `entities=[Paris/LOC, ...]`."""
    return slot.kind.show(row, {role: f"{prefix}{col}" for role, col in slot.columns.items()})


def cmd_submit(args: argparse.Namespace) -> int:
    from pipeline.submit import submit

    _load_config(args)  # fail here, not on the cluster, on a bad config
    _, status = submit(
        args.address,
        args.config,
        date=args.date,
        overrides=args.set or [],
        overwrite=args.overwrite,
        working_dir=args.working_dir,
        wait=not args.no_wait,
    )
    return 0 if status in ("SUCCEEDED", "PENDING") else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.cluster import ensure_ray
    from pipeline.engine import check_models
    from pipeline.serve import start
    from pipeline.serve_front import local_env

    cfg = _load_config(args)
    check_models(cfg)  # a missing or broken model fails here, in one line, before Ray starts
    ensure_ray(args.address or cfg.ray.address, local_env(cfg.serve.proxy))
    start(cfg, blocking=True)
    return 0


def cmd_models_random(args: argparse.Namespace) -> int:
    from pipeline.demo.random_models import SIZES, build_random_pair

    cls, ner = build_random_pair(Path(args.out), **SIZES[args.size])
    print(json.dumps({"classifier": str(cls), "ner": str(ner)}))
    return 0


def cmd_models_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import build

    kwargs: dict[str, Any] = {"ner_steps": 80, "cls_steps": 20, "sentiment_steps": 30} if args.quick else {}
    metrics = build(Path(args.out), progress=not args.no_progress, **kwargs)
    print(json.dumps(metrics))
    return 0


def cmd_models_tune(args: argparse.Namespace) -> int:
    from pipeline import tune

    cfg = _load_config(args)
    source = args.input or cfg.batch_input.path
    if "{date}" in source:
        print(f"error: the input {source!r} names a night; measure on one with --input PATH", file=sys.stderr)
        return 2
    cfg = cfg.model_copy(update={"input": cfg.batch_input.model_copy(update={"path": source})})
    verdicts = tune.measure(cfg, tune.sample_texts(cfg, args.texts), repeats=args.repeats)
    print(tune.summary(verdicts), file=sys.stderr)
    print(json.dumps(verdicts))
    return 0


BENCHES = {
    "throughput": "bench.throughput",
    "serve-load": "bench.serve_load",
    "scale": "bench.scale",
    "soak": "bench.soak",
    "embeddings": "bench.embeddings",
}


def cmd_bench(args: argparse.Namespace) -> int:
    """The benchmarks are the `bench` package installed beside `pipeline` (see pyproject.toml)."""
    import importlib

    try:
        module = importlib.import_module(BENCHES[args.bench])
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", BENCHES[args.bench]):
            raise
        print(
            "error: the benchmarks are not installed: reinstall from the checkout (pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return 2
    module.main(args.bench_args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser, positional: bool = False) -> None:
        if positional:
            p.add_argument("config", help="YAML config file")
        else:
            p.add_argument("--config", "-c", required=True, help="YAML config file")
        p.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
        )

    p = sub.add_parser(
        "annotate", help="annotate texts given as arguments (or lines on stdin); prints JSON lines"
    )
    with_config(p)
    p.add_argument("texts", nargs="*", help="texts; '-' or none reads stdin")
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("run", help="run the batch job (local Ray unless --address / RAY_ADDRESS)")
    with_config(p, positional=True)
    p.add_argument("--date", help="fills {date} in paths (default: yesterday, UTC)")
    p.add_argument("--overwrite", action="store_true", help="redo a night that already completed")
    p.add_argument("--address", help="Ray cluster address (default: ray.address, RAY_ADDRESS, or local)")
    p.add_argument("--show", type=int, default=3, metavar="N", help="print N annotated output rows (0: none)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit the batch job to a Ray cluster (Job Submission API) and wait")
    with_config(p, positional=True)
    p.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    p.add_argument("--date", help="fills {date} in paths (default: yesterday, UTC, on the cluster)")
    p.add_argument("--overwrite", action="store_true", help="redo a night that already completed")
    p.add_argument("--working-dir", default=".", help="project directory shipped to the cluster")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "serve", help="serve the models over HTTP with Ray Serve (default http://127.0.0.1:8000)"
    )
    with_config(p, positional=True)
    p.add_argument("--address", help="Ray cluster address (default: ray.address, RAY_ADDRESS, or local)")
    p.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="build models offline").add_subparsers(
        dest="models_command", required=True
    )
    p = models.add_parser(
        "demo",
        help="fine-tune the offline demo models: topic classifier, NER, sentiment (1-2.5 minutes on 2 CPU cores)",
    )
    p.add_argument("--out", default="models/demo", help="where the models are written (default models/demo)")
    p.add_argument("--quick", action="store_true", help="fewer training steps (tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.set_defaults(func=cmd_models_demo)
    p = models.add_parser(
        "tune",
        aliases=["quantize"],
        help="measure every engine and dtype this CPU can run (torch fp32 and native bf16, ONNX Runtime "
        "fp32 and int8) on the config's input, against torch fp32's answers; runtime.dtype auto then "
        "runs the fastest that holds the quality gate on this CPU model",
    )
    with_config(p, positional=True)
    p.add_argument("--input", help="Parquet texts to measure on (default: the config's input)")
    p.add_argument("--texts", type=int, default=500, help="how many texts (default 500)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per variant; the fastest counts")
    p.set_defaults(func=cmd_models_tune)
    p = models.add_parser("random", help="random-weight classifier + NER pair (tests, benchmarks)")
    p.add_argument("--out", default="models/random", help="where the pair is written (default models/random)")
    p.add_argument(
        "--size", choices=["tiny", "minilm", "base"], default="tiny", help="model shape (default tiny)"
    )
    p.set_defaults(func=cmd_models_random)

    p = sub.add_parser(
        "bench",
        help="benchmarks: throughput (vs HF pipelines, Ray Data recipe), serve-load, scale (100k/1M docs), "
        "soak (the online API under load for minutes), embeddings (vs sentence-transformers)",
    )
    p.add_argument("bench", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed on, e.g. --quick; see --help")
    p.set_defaults(func=cmd_bench)
    return parser


class Stopped(KeyboardInterrupt):
    """SIGTERM (kill, systemd, Kubernetes), handled as Ctrl-C is: the same clean stop."""

    signum = signal.SIGTERM


def _stop(signum: int, frame: object) -> None:
    raise Stopped()


# What a stop leaves behind, per command: the operator's next step (a stopped server says
# itself what became of its app: pipeline.serve.ServeStopped).
AFTER_STOP = {
    "run": "what was written stays staged; the same command resumes the night",
}


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """The command; with `own_process` (the `pipeline` script) it also owns the process's
    signals and stderr, which a caller of main() in its own process keeps."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if own_process and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    if own_process and args.command in ("run", "serve") and not args.verbose:
        from pipeline.console import filter_stderr

        filter_stderr()  # Ray's harmless notices that read like crashes (see pipeline.console)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pipeline.models import ModelLoadError
    from pipeline.serve_front import FrontError
    from pipeline.storage import StorageError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ModelLoadError) as exc:  # the config or the model must change
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (
        StorageError,
        FrontError,
    ) as exc:  # the store or a port failed: the same command may succeed later
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        after = getattr(exc, "after", None) or AFTER_STOP.get(args.command)
        print(f"stopped ({signal.Signals(signum).name}){': ' + after if after else ''}", file=sys.stderr)
        # a server asked to stop has done its job; any other command did not finish
        return 0 if args.command == "serve" else 128 + signum


def entry() -> int:
    """The `pipeline` script."""
    return main(sys.argv[1:], own_process=True)


if __name__ == "__main__":
    sys.exit(entry())
