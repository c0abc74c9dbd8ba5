"""The `pipeline` command: annotate, run, submit, serve, models, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

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


def cmd_models_random(args: argparse.Namespace) -> int:
    from pipeline.random_models import SIZES, build_random_pair

    cls, ner = build_random_pair(Path(args.out), **SIZES[args.size])
    print(json.dumps({"classifier": str(cls), "ner": str(ner)}))
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

    models = sub.add_parser("models", help="build models offline").add_subparsers(
        dest="models_command", required=True
    )
    p = models.add_parser("random", help="random-weight classifier + NER pair (tests, benchmarks)")
    p.add_argument("--out", default="models/random")
    p.add_argument("--size", choices=["tiny", "minilm", "base"], default="tiny")
    p.set_defaults(func=cmd_models_random)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pipeline.models import ModelLoadError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
