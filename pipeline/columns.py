"""Arrow columns <-> the per-document records of encode, infer and decode.

Ray Data moves Arrow tables between stages; the steps work on NumPy arrays per document.
Ragged arrays travel as flat list columns (one values buffer plus offsets), so a batch
crosses the object store as a handful of buffers and is split back without copies.
The output schema (label, label_score, entities, error) is fixed here, once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.decode import Decoded, FlatNer, Outputs
from pipeline.encode import Encoded, Tokens
from pipeline.infer import Inferred

PREFIX = "__bp_"
IDS, OFFSETS, CLS_IDS, ERR = f"{PREFIX}ids", f"{PREFIX}offsets", f"{PREFIX}cls_ids", f"{PREFIX}error"
CLS_LOGITS, NER_SPANS, NER_LOGITS = f"{PREFIX}cls_logits", f"{PREFIX}ner_spans", f"{PREFIX}ner_logits"

ENTITY = pa.struct(
    [
        ("label", pa.string()),
        ("text", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("score", pa.float32()),
    ]
)
TOP_LABEL = pa.struct([("label", pa.string()), ("score", pa.float32())])


def output_fields(prefix: str = "", top_k: bool = False) -> list[pa.Field]:
    """The columns every output file gets, after the input columns."""
    fields = [
        pa.field(f"{prefix}label", pa.string()),
        pa.field(f"{prefix}label_score", pa.float32()),
    ]
    if top_k:
        fields.append(pa.field(f"{prefix}labels", pa.list_(TOP_LABEL)))
    fields += [pa.field(f"{prefix}entities", pa.list_(ENTITY)), pa.field(f"{prefix}error", pa.string())]
    return fields


# -- ragged arrays <-> list columns -------------------------------------------------------
def to_list_array(items: list[np.ndarray | None], value_type: pa.DataType, large: bool = False) -> pa.Array:
    lengths = np.fromiter((0 if a is None else len(a) for a in items), dtype=np.int64, count=len(items))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    present = [a for a in items if a is not None and len(a)]
    values = np.concatenate(present) if present else np.zeros(0, dtype=value_type.to_pandas_dtype())
    mask = pa.array([a is None for a in items], pa.bool_())
    cls = pa.LargeListArray if large else pa.ListArray
    off = pa.array(offsets, pa.int64() if large else pa.int32())
    return cls.from_arrays(off, pa.array(values, value_type), mask=mask)


def from_list_array(col: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(arr))]


def _strings(col: pa.ChunkedArray) -> list[str | None]:
    return col.to_pylist()


# -- encode -> infer ----------------------------------------------------------------------
def encoded_to_columns(docs: list[Encoded], shared: bool) -> dict[str, pa.Array]:
    stream = [d.ner if d.ner is not None else d.cls for d in docs]
    cols = {
        IDS: to_list_array([t.ids if t is not None else None for t in stream], pa.int32()),
        OFFSETS: to_list_array(
            [t.offsets.reshape(-1) if t is not None else None for t in stream], pa.int32()
        ),
        ERR: pa.array([d.error for d in docs], pa.string()),
    }
    has_both = any(d.cls is not None and d.ner is not None for d in docs)
    if has_both and not shared:
        cols[CLS_IDS] = to_list_array([d.cls.ids if d.cls is not None else None for d in docs], pa.int32())
    return cols


def columns_to_encoded(table: pa.Table, has_cls: bool, has_ner: bool) -> list[Encoded]:
    ids = from_list_array(table.column(IDS))
    offs = from_list_array(table.column(OFFSETS))
    errs = _strings(table.column(ERR))
    cls_ids = from_list_array(table.column(CLS_IDS)) if CLS_IDS in table.column_names else None
    out = []
    for i, err in enumerate(errs):
        if err is not None or ids[i] is None:
            out.append(Encoded(error=err or "missing tokens"))
            continue
        stream = Tokens(ids[i], offs[i].reshape(-1, 2))
        cls = None
        if has_cls:
            cls = Tokens(cls_ids[i], np.zeros((0, 2), np.int32)) if cls_ids is not None else stream
        out.append(Encoded(cls=cls, ner=stream if has_ner else None))
    return out


# -- infer -> decode ----------------------------------------------------------------------
def inferred_to_columns(results: list[Inferred]) -> dict[str, pa.Array]:
    return {
        CLS_LOGITS: to_list_array([r.cls_logits for r in results], pa.float32()),
        NER_SPANS: to_list_array(
            [r.ner_spans.reshape(-1) if r.ner_spans is not None else None for r in results], pa.int64()
        ),
        NER_LOGITS: to_list_array(
            [r.ner_logits.reshape(-1) if r.ner_logits is not None else None for r in results],
            pa.float32(),
            large=True,
        ),
        ERR: pa.array([r.error for r in results], pa.string()),
    }


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, offsets from 0, valid) of a list column, without a copy per document."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0], valid


def columns_to_outputs(table: pa.Table, n_ner_labels: int | None) -> Outputs:
    """The model outputs of a batch as flat arrays (what `Decoder.decode_outputs` reads)."""
    n = table.num_rows
    errors = _strings(table.column(ERR))
    logits, offs, cls_valid = _flat(table.column(CLS_LOGITS))
    cls_logits = None
    if cls_valid.any():
        width = int(np.diff(offs)[cls_valid][0])
        cls_logits = np.zeros((n, width), np.float32)
        cls_logits[cls_valid] = logits.reshape(-1, width)
    ner = None
    spans, span_offs, ner_valid = _flat(table.column(NER_SPANS))
    if n_ner_labels:
        ids, tok_start, _ = _flat(table.column(IDS))
        offsets, _, _ = _flat(table.column(OFFSETS))
        ner_logits, _, _ = _flat(table.column(NER_LOGITS))
        ner = FlatNer(
            ids=ids,
            offsets=offsets.reshape(-1, 2),
            tok_start=tok_start,
            spans=spans.reshape(-1, 2),
            win_start=span_offs // 2,
            logits=ner_logits.reshape(-1, n_ner_labels),
        )
    return Outputs(errors, cls_logits, cls_valid, ner, ner_valid)


# -- decode -> output ---------------------------------------------------------------------
def entities_to_array(decoded: Decoded) -> pa.Array:
    """The entities column straight from the flat entities: no dict per entity."""
    n = len(decoded.error)
    found, keep = decoded.found, decoded.keep
    if found is None or keep is None:
        return pa.array(decoded.entities, pa.list_(ENTITY))
    counts = np.diff(found.bounds)
    owner = np.repeat(np.arange(n), counts)
    rows = np.flatnonzero(keep[owner])
    owner = owner[rows]
    starts, ends = found.start[rows], found.end[rows]
    texts = decoded.texts
    struct = pa.StructArray.from_arrays(
        [
            pa.array([found.label[r] for r in rows.tolist()], pa.string()),
            pa.array(
                [
                    texts[d][a:b]
                    for d, a, b in zip(owner.tolist(), starts.tolist(), ends.tolist(), strict=True)
                ],  # type: ignore[index]
                pa.string(),
            ),
            pa.array(starts.astype(np.int32)),
            pa.array(ends.astype(np.int32)),
            pa.array(found.score[rows].astype(np.float32)),
        ],
        fields=list(ENTITY),
    )
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.where(keep, counts, 0), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), struct, mask=pa.array(~keep))


def decoded_to_columns(decoded: Decoded, prefix: str = "", top_k: bool = False) -> dict[str, pa.Array]:
    values = {
        "label": pa.array(decoded.label, pa.string()),
        "label_score": pa.array(decoded.label_score, pa.float32()),
        "labels": pa.array(decoded.labels, pa.list_(TOP_LABEL)) if top_k else None,
        "entities": entities_to_array(decoded),
        "error": pa.array(decoded.error, pa.string()),
    }
    return {f.name: values[f.name[len(prefix) :]] for f in output_fields(prefix, top_k)}


def replace_columns(table: pa.Table, cols: dict[str, pa.Array], drop: tuple[str, ...] = ()) -> pa.Table:
    """Append (or replace) columns and drop internal ones, keeping the input columns in order."""
    keep = [n for n in table.column_names if n not in cols and n not in drop]
    table = table.select(keep)
    for name, arr in cols.items():
        table = table.append_column(name, arr)
    return table


def internal_columns(table: pa.Table) -> tuple[str, ...]:
    return tuple(n for n in table.column_names if n.startswith(PREFIX))
