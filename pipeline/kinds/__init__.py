"""The model kinds, registered in one place, and where each configured model's results go.

Encode, infer, decode, the Ray Data stages, Serve, lineage and the run report loop over the
configured models and ask their kind; none of them names a kind. A new kind is one module
beside these (a `Kind`), one line in `KINDS` and its spec in `pipeline.config.SPECS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline.config import DEFAULT_KINDS, ConfigError, ModelsConfig, ModelSpec
from pipeline.kinds.base import Kind
from pipeline.kinds.classification import Classification
from pipeline.kinds.ner import Ner

KINDS: dict[str, Kind] = {k.name: k for k in (Classification(), Ner())}


def kind_of(spec: ModelSpec) -> Kind:
    return KINDS[spec.kind]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Slot:
    """One model's place in every output row: its columns by role (without output.prefix).

    `classifier` and `ner` always have a slot, configured or not, so their columns (label,
    label_score, entities) stay in every output as they always were; null when absent.
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
        spec = models.get(name)
        if spec is None or spec.kind == kind_name:  # type: ignore[attr-defined]
            kind = KINDS[kind_name]
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
