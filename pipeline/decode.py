"""Model outputs -> each document's results, with Hugging Face pipelines' exact semantics.

Each configured model is decoded by its kind (`pipeline.kinds`: classification follows
`TextClassificationPipeline.postprocess`, NER `TokenClassificationPipeline`), a whole batch
at a time. Results land in the model's slot: its columns (`label`, `label_score`, `entities`
for `classifier` and `ner`; `{name}_label`, ... for other names) plus one `error` per document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from pipeline.encode import Encoded
from pipeline.infer import Inferred
from pipeline.kinds import Slot, kind_of, slots
from pipeline.kinds.base import KindBatch, KindDecoded, KindDecoder, Listed
from pipeline.row_errors import failed

if TYPE_CHECKING:
    from pipeline.config import ModelsConfig
    from pipeline.models import LoadedModel


@dataclass
class Outputs:
    """What the models produced for a batch of documents, per model, as its kind's batch."""

    error: list[str | None]
    batches: dict[str, KindBatch] = field(default_factory=dict)

    @classmethod
    def from_inferred(cls, docs: list[Encoded], inferred: list[Inferred], models: dict) -> Outputs:
        """From per-document results (the in-process and online path)."""
        batches = {
            name: kind_of(lm.spec).from_results(
                [inf.outputs.get(name) for inf in inferred],
                [d.streams.get(name) for d in docs],
                len(lm.id2label),
            )
            for name, lm in models.items()
        }
        return cls([inf.error for inf in inferred], batches)

    def doc(self, i: int) -> Outputs:
        return Outputs(self.error[i : i + 1], {n: b.doc(i) for n, b in self.batches.items()})


@dataclass
class Decoded:
    """A batch's results: per model its kind's decoded roles, and one error per document."""

    slots: list[Slot]
    parts: dict[str, KindDecoded]  # by model name; a slot without a part is null
    error: list[str | None]

    def values(self, slot: Slot, role: str) -> list[Any]:
        part = self.parts.get(slot.name)
        if part is None or role not in {r for r, _ in slot.kind.roles(slot.spec)}:
            return [None] * len(self.error)
        return part.values(role)

    @classmethod
    def failed(cls, slots_: list[Slot], error: str) -> Decoded:
        return cls(slots_, {}, [error])

    @classmethod
    def concat(cls, parts: list[Decoded]) -> Decoded:
        first = parts[0]
        joined: dict[str, KindDecoded] = {}
        for slot in first.slots:
            if slot.spec is None:
                continue
            lists = {
                role: [v for p in parts for v in p.values(slot, role)]
                for role, _ in slot.kind.roles(slot.spec)
            }
            joined[slot.name] = Listed(lists)
        return cls(first.slots, joined, [e for p in parts for e in p.error])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per document: every slot's columns (without prefix), then `error`."""
        columns = {
            slot.columns[role]: self.values(slot, role)
            for slot in self.slots
            for role, _ in slot.kind.roles(slot.spec)
        }
        return [
            {**{col: vals[i] for col, vals in columns.items()}, "error": err}
            for i, err in enumerate(self.error)
        ]

    def to_columns(self, prefix: str = "") -> dict[str, pa.Array]:
        """The output columns, in output order, as Arrow arrays."""
        n = len(self.error)
        cols: dict[str, pa.Array] = {}
        for slot in self.slots:
            part = self.parts.get(slot.name)
            for role, type_ in slot.kind.roles(slot.spec):
                name = f"{prefix}{slot.columns[role]}"
                cols[name] = part.array(role, type_) if part is not None else pa.nulls(n, type_)
        cols[f"{prefix}error"] = pa.array(self.error, pa.string())
        return cols


class Decoder:
    """Builds each document's results for every configured model, and its error."""

    def __init__(self, models: dict[str, LoadedModel], config: ModelsConfig) -> None:
        self.models = models
        self.slots = slots(config)
        self.decoders: dict[str, KindDecoder] = {
            name: kind_of(lm.spec).decoder(lm) for name, lm in models.items()
        }

    def decode(
        self, texts: Sequence[object], docs: list[Encoded], inferred: list[Inferred]
    ) -> list[dict[str, Any]]:
        """One result dict per document (the in-process and online path)."""
        return self.decode_outputs(texts, Outputs.from_inferred(docs, inferred, self.models)).rows()

    def decode_outputs(self, texts: Sequence[object], out: Outputs) -> Decoded:
        """Decode a batch; a document that makes decoding fail gets its own error, the others do not."""
        try:
            return self._decode(texts, out)
        except Exception:  # noqa: BLE001 - isolate the culprit, one document at a time
            parts = []
            for i in range(len(out.error)):
                try:
                    parts.append(self._decode(texts[i : i + 1], out.doc(i)))
                except Exception as exc:  # noqa: BLE001
                    parts.append(Decoded.failed(self.slots, failed("decode", exc)))
            return Decoded.concat(parts)

    def _decode(self, texts: Sequence[object], out: Outputs) -> Decoded:
        ok = np.array([e is None for e in out.error], dtype=bool)
        parts = {
            name: self.decoders[name].decode(texts, batch, ok)
            for name, batch in out.batches.items()
            if name in self.decoders
        }
        return Decoded(self.slots, parts, list(out.error))
