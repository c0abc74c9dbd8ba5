"""The model kinds, registered in one place, and where each configured model's results go.

Encode, infer, decode, the Ray Data stages, Serve, lineage and the run report loop over the
configured models and ask their kind; none of them names a kind. A kind is one module with a
`Kind` (its spec, forward output, roles, decode, display, agreement and online fields),
registered here with `register`: the built-in ones below, and those that installed packages
declare under the entry-point group `bert_pipeline.kinds` (a `Kind` class or instance), so
every process of a cluster, workers and replicas included, knows the same kinds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pyarrow as pa

from pipeline.config import (
    DEFAULT_KINDS,
    ConfigError,
    ModelsConfig,
    ModelSpec,
    register_spec,
    unregister_spec,
)
from pipeline.kinds.base import Kind
from pipeline.kinds.classification import Classification
from pipeline.kinds.embedding import Embedding
from pipeline.kinds.ner import Ner

log = logging.getLogger(__name__)
ENTRY_POINTS = "bert_pipeline.kinds"
KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind: configs may then name it (`kind: <name>`, or its default model name), and
    every stage, Serve route and gate serves it."""
    KINDS[kind.name] = kind
    register_spec(kind.name, kind.spec, kind.default_name)
    return kind


def unregister(name: str) -> None:
    """Remove a kind (a test's, or a plug-in being replaced)."""
    kind = KINDS.pop(name)
    unregister_spec(kind.name, kind.default_name)


def _plugins() -> None:
    for entry in entry_points(group=ENTRY_POINTS):
        try:
            found = entry.load()
            register(found() if isinstance(found, type) else found)
        except Exception:  # noqa: BLE001 - one broken plug-in must not stop the others
            log.exception("could not load the model kind %s (entry point %s)", entry.name, entry.value)


for _builtin in (Classification(), Ner(), Embedding()):
    register(_builtin)
_plugins()


def kind_of(spec: ModelSpec) -> Kind:
    return KINDS[spec.kind]


@dataclass(frozen=True)
class Slot:
    """One model's place in every output row: its columns by role (without output.prefix).

    The first kinds' default names (`classifier`, `ner`) have a slot whether configured or not,
    so outputs keep the columns their readers have always had (label, label_score, entities:
    null when absent); every other model has one when configured.
    """

    name: str
    kind: Kind
    spec: ModelSpec | None  # None: a default model that this config does not have
    columns: dict[str, str]  # role -> column

    def fields(self, prefix: str = "") -> list[pa.Field]:
        return [pa.field(f"{prefix}{self.columns[role]}", t) for role, t in self.kind.roles(self.spec)]


def slots(models: ModelsConfig) -> list[Slot]:
    """The output slots of a config: classifier, ner, then the other models as configured."""
    out = []
    for name, kind_name in DEFAULT_KINDS.items():
        spec, kind = models.get(name), KINDS[kind_name]
        if (spec is None and kind.always_in_output) or (spec is not None and spec.kind == kind_name):
            out.append(Slot(name, kind, spec, kind.default_columns()))
    taken = {s.name for s in out}
    for name, spec in models.items():
        if name not in taken:
            kind = kind_of(spec)
            roles = {role for role, _ in kind.roles(spec)} | set(kind.default_columns())
            out.append(Slot(name, kind, spec, {role: f"{name}_{role}" for role in sorted(roles)}))
    seen: dict[str, str] = {"error": "the error column"}
    for slot in out:
        for column in slot.columns.values():
            if column in seen:
                raise ConfigError(
                    f"models.{slot.name}'s column {column} clashes with {seen[column]}: rename the model"
                )
            seen[column] = f"models.{slot.name}'s"
    return out


def output_fields(models: ModelsConfig, prefix: str = "") -> list[pa.Field]:
    """The columns every output file gets after the input columns: each slot's, then error."""
    fields = [f for slot in slots(models) for f in slot.fields(prefix)]
    return fields + [pa.field(f"{prefix}error", pa.string())]


def agreement(rows: list[dict[str, Any]], ref: list[dict[str, Any]]) -> dict[str, float]:
    """Every measure of every kind whose default columns hold values in `ref` (rows keyed by
    those names, as `Annotator` gives them for the default models)."""
    out: dict[str, float] = {}
    for kind in KINDS.values():
        columns = kind.default_columns()
        if any(r.get(column) is not None for r in ref for column in columns.values()):
            out.update(kind.agreement(rows, ref, columns))
    return out
