"""Arrow columns <-> the per-document records of encode, infer and decode.

Ray Data moves Arrow tables between stages; the steps work on NumPy arrays per document.
Ragged arrays travel as flat list columns (one values buffer plus offsets), so a batch
crosses the object store as a handful of buffers and is split back without copies.

Internal columns (all prefixed `__bp_`): per distinct tokenizer g, `t{g}_ids` and, when one
of its models decodes with character offsets, `t{g}_offsets`; per model, the columns its
kind writes under `m_{name}_`; and `error`. The output columns are `pipeline.kinds`' slots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.arrow_lists import from_list_array, to_list_array
from pipeline.decode import Outputs
from pipeline.encode import Encoded, Encoder, Tokens
from pipeline.infer import Inferred
from pipeline.kinds import kind_of

if TYPE_CHECKING:
    from pipeline.models import LoadedModel

PREFIX = "__bp_"
ERR = f"{PREFIX}error"


def stream_columns(group: int) -> tuple[str, str]:
    """(ids, offsets) column names of tokenizer group `group`'s stream."""
    return f"{PREFIX}t{group}_ids", f"{PREFIX}t{group}_offsets"


def model_key(name: str) -> str:
    """The prefix of one model's internal columns."""
    return f"{PREFIX}m_{name}_"


def offset_groups(encoder: Encoder, models: dict[str, LoadedModel]) -> set[int]:
    """Tokenizer groups whose offsets a decoder reads (the others travel as ids only)."""
    return {g for name, g in encoder.group_of.items() if kind_of(models[name].spec).needs_offsets}


# -- encode -> infer ----------------------------------------------------------------------
def encoded_to_columns(docs: list[Encoded], encoder: Encoder, with_offsets: set[int]) -> dict[str, pa.Array]:
    first = {g: n for n, g in reversed(encoder.group_of.items())}  # a model that reads group g
    cols: dict[str, pa.Array] = {}
    for g, name in sorted(first.items()):
        stream = [d.streams.get(name) for d in docs]
        ids_col, offsets_col = stream_columns(g)
        cols[ids_col] = to_list_array([t.ids if t is not None else None for t in stream], pa.int32())
        if g in with_offsets:
            cols[offsets_col] = to_list_array(
                [t.offsets.reshape(-1) if t is not None else None for t in stream], pa.int32()
            )
    cols[ERR] = pa.array([d.error for d in docs], pa.string())
    return cols


def columns_to_encoded(table: pa.Table, group_of: dict[str, int]) -> list[Encoded]:
    errs = table.column(ERR).to_pylist()
    streams: dict[int, list[Tokens | None]] = {}
    for g in sorted(set(group_of.values())):
        ids_col, offsets_col = stream_columns(g)
        ids = from_list_array(table.column(ids_col))
        offs = from_list_array(table.column(offsets_col)) if offsets_col in table.column_names else None
        no_offsets = np.zeros((0, 2), np.int32)
        streams[g] = [
            None if a is None else Tokens(a, _pairs(offs[i]) if offs is not None else no_offsets)
            for i, a in enumerate(ids)
        ]
    out = []
    for i, err in enumerate(errs):
        found = {name: streams[g][i] for name, g in group_of.items()}
        tokens = {name: t for name, t in found.items() if t is not None}
        if err is not None or len(tokens) < len(found):
            out.append(Encoded(error=err or "inference failed: missing tokens"))
        else:
            out.append(Encoded(tokens))
    return out


def _pairs(offsets: np.ndarray | None) -> np.ndarray:
    """A window's flat offsets as (start, end) rows; a row with ids always has its offsets."""
    if offsets is None:
        raise ValueError("token ids without their offsets")
    return offsets.reshape(-1, 2)


# -- infer -> decode ----------------------------------------------------------------------
def inferred_to_columns(results: list[Inferred], models: dict[str, LoadedModel]) -> dict[str, pa.Array]:
    cols: dict[str, pa.Array] = {}
    for name, lm in models.items():
        cols.update(kind_of(lm.spec).to_columns(model_key(name), [r.outputs.get(name) for r in results]))
    cols[ERR] = pa.array([r.error for r in results], pa.string())
    return cols


def ids_only_columns(table: pa.Table) -> tuple[str, ...]:
    """Token ids of streams whose offsets are not kept: used by infer, not needed by decode."""
    names = set(table.column_names)
    return tuple(
        n
        for n in names
        if n.endswith("_ids") and n.startswith(f"{PREFIX}t") and n[:-4] + "_offsets" not in names
    )


def columns_to_outputs(table: pa.Table, models: dict[str, LoadedModel], group_of: dict[str, int]) -> Outputs:
    """The model outputs of a batch as each kind's batch (what `Decoder.decode_outputs` reads)."""
    batches = {}
    for name, lm in models.items():
        ids_col, offsets_col = stream_columns(group_of[name])
        stream = (ids_col, offsets_col if offsets_col in table.column_names else None)
        batches[name] = kind_of(lm.spec).from_columns(model_key(name), table, stream, len(lm.id2label))
    return Outputs(table.column(ERR).to_pylist(), batches)


# -- tables -------------------------------------------------------------------------------
def replace_columns(table: pa.Table, cols: dict[str, pa.Array], drop: tuple[str, ...] = ()) -> pa.Table:
    """Append (or replace) columns and drop internal ones, keeping the input columns in order."""
    keep = [n for n in table.column_names if n not in cols and n not in drop]
    table = table.select(keep)
    for name, arr in cols.items():
        table = table.append_column(name, arr)
    return table


def internal_columns(table: pa.Table) -> tuple[str, ...]:
    return tuple(n for n in table.column_names if n.startswith(PREFIX))
