"""The README's config and CLI reference, generated from the pydantic models and the argument
parser, so the guide cannot drift from the code (a test compares them; `python -m
pipeline.reference README.md` rewrites the blocks in place)."""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.config import DEFAULT_KINDS, SPECS, DeploymentOptions, ModelSpec, PipelineConfig

BLOCK = re.compile(r"(<!-- (?P<name>[a-z-]+) reference: generated[^>]*-->\n).*?(<!-- end -->)", re.S)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(v) for v in typing.get_args(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{min, max}" if annotation.__name__ == "ActorRange" else "section"
    name = getattr(annotation, "__name__", None) or str(annotation)
    return "int > 0" if "PositiveInt" in str(annotation) or name == "Annotated" else name


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else repr(value)
    if field.default is PydanticUndefined:
        return "**required**"
    return "null" if field.default is None else repr(field.default)


def _row(key: str, field: Any, note: str = "") -> str:
    meaning = f"{note}{field.description or ''}"
    return f"| `{key}` | {_cell(_type(field.annotation))} | {_cell(_default(field))} | {_cell(meaning)} |"


def _rows(prefix: str, model: type[BaseModel]) -> list[str]:
    """One row per key, nested sections flattened under their dotted prefix."""
    rows = []
    for name, field in model.model_fields.items():
        nested = _section(field.annotation)
        if nested is not None and nested.__name__ != "ActorRange":
            if nested is not DeploymentOptions:
                rows += _rows(f"{prefix}{name}.", nested)
            continue
        rows.append(_row(prefix + name, field))
    return rows


def _section(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def config_reference() -> str:
    rows = ["| key | type | default | |", "| --- | --- | --- | --- |"]
    rows += _rows("models.NAME.", ModelSpec)
    fields: dict[tuple[str, str, str], Any] = {}
    kinds = " | ".join(SPECS)
    rows[2] = (
        f"| `models.NAME.kind` | {_cell(kinds)} | the name's kind | the names {_cell(_implied())} imply their kind |"
    )
    own: dict[tuple[str, str, str], list[str]] = {}  # a key that kinds share is one row naming them
    for kind, spec in SPECS.items():
        for name, field in spec.model_fields.items():
            base = ModelSpec.model_fields.get(name)
            if name != "kind" and (base is None or field.default != base.default):
                key = (name, repr(field.default), field.description or "")
                own.setdefault(key, []).append(kind)
                fields[key] = field
    for key, kinds_ in own.items():
        rows.append(_row(f"models.NAME.{key[0]}", fields[key], note=f"({', '.join(kinds_)}) "))
    for name, field in PipelineConfig.model_fields.items():
        section = _section(field.annotation)
        if name == "models":
            continue
        rows += _rows(f"{name}.", section) if section else [_row(name, field)]
        if name == "serve":
            rows += _rows("serve.ingress / serve.model.", DeploymentOptions)
    return "\n".join(rows)


def _implied() -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in DEFAULT_KINDS.items())


def cli_reference() -> str:
    from pipeline.cli import build_parser

    rows = ["| command | option | |", "| --- | --- | --- |"]
    for path, parser in [(["pipeline"], top := build_parser()), *_commands(top, [])]:
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or not action.help:
                continue
            value = action.metavar or (
                "{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper()
            )
            flag = ", ".join(action.option_strings) or value
            if action.option_strings and action.nargs != 0:
                flag += f" {value}"
            default = action.default if action.default not in (None, False, argparse.SUPPRESS) else None
            meaning = (action.help or "") + (
                f" (default {default})"
                if default is not None and "default" not in (action.help or "")
                else ""
            )
            rows.append(f"| `{' '.join(path)}` | `{_cell(flag)}` | {_cell(meaning)} |")
    return "\n".join(rows)


def _commands(parser: argparse.ArgumentParser, path: list[str]):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if path:
        yield [*path], parser
    for sub in subs:
        seen: set[int] = set()
        for name, child in sub.choices.items():  # an alias maps to its command's parser: once
            if id(child) not in seen:
                seen.add(id(child))
                yield from _commands(child, [*path, name] if path else ["pipeline", name])


GENERATORS = {"config": config_reference, "cli": cli_reference}


def render(text: str) -> str:
    """`text` with each generated block rewritten from the code."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{GENERATORS[m.group('name')]()}\n{m.group(3)}", text)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "README.md")
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
