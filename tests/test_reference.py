"""The README's config and CLI reference are generated from the code; these tests fail when the
two drift apart (regenerate with `python -m pipeline.reference README.md`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import build_parser
from pipeline.config import PipelineConfig
from pipeline.reference import BLOCK, config_reference, render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_reference_blocks_are_what_the_code_generates():
    text = README.read_text()
    assert {m.group("name") for m in BLOCK.finditer(text)} == {"config", "cli"}
    assert render(text) == text, "stale: run python -m pipeline.reference README.md"


def test_every_config_key_is_in_the_reference():
    table = config_reference()
    for section in ("runtime", "ray", "input", "output", "s3", "serve"):
        model = PipelineConfig.model_fields[section].annotation
        model = next(a for a in (model, *getattr(model, "__args__", ())) if hasattr(a, "model_fields"))
        for key in model.model_fields:
            if key not in ("ingress", "model"):
                assert f"`{section}.{key}`" in table, f"{section}.{key}"
    assert "`serve.ingress / serve.model.max_queued_requests`" in table
    assert "`models.NAME.aggregation`" in table and "`models.NAME.pooling`" in table


def test_every_cli_option_has_help_and_is_in_the_readme():
    text = README.read_text()

    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                seen_parsers: set[int] = set()
                for name, child in action.choices.items():  # an alias (models quantize) once, by its name
                    if id(child) not in seen_parsers:
                        seen_parsers.add(id(child))
                        yield from walk(child, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                yield path, action

    seen = 0
    for path, action in walk(build_parser(), "pipeline"):
        assert action.help, f"{path} {action.option_strings or action.dest}: no help"
        for flag in action.option_strings:
            assert f"| `{path}` | `{flag}" in text or f", {flag}" in text, f"{path} {flag} not in README"
        seen += 1
    assert seen > 25


def test_the_readme_stays_a_guide():
    assert len(README.read_text().splitlines()) <= 350, "history and investigations belong in docs/"
