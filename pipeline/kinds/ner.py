"""Token classification (NER): entities with character offsets, with
`TokenClassificationPipeline` semantics (gather_pre_entities, aggregate, group_entities,
ignore_labels, aggregate_overlapping_entities).

Every window of a long document is run (neighbours share `stride` tokens) and the windows'
content-token logits are laid end to end. Decoding works on a whole batch at once: the tokens
of every window of every document sit in flat arrays (`FlatNer`), so softmax, word grouping
and entity grouping are a handful of NumPy calls per batch, not per document; window
boundaries always cut words and entities, exactly as HF's per-window processing does. Only
documents with several windows go through the (Python) overlap merge. Entity `text` is the
exact slice `text[start:end]` of the input. Output role: entities; the model named `ner`
keeps the column `entities`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from pipeline.agreement import entity_f1, spans
from pipeline.arrow_lists import flat_list, to_list_array
from pipeline.config import ModelSpec
from pipeline.kinds.base import (
    HfContext,
    HfParameterError,
    Kind,
    KindBatch,
    KindDecoded,
    KindDecoder,
    softmax,
)

if TYPE_CHECKING:
    from pipeline.encode import Framing, Tokens

Aggregation = Literal["none", "simple", "first", "average", "max"]


class NerSpec(ModelSpec):
    auto_class: ClassVar[str] = "AutoModelForTokenClassification"
    kind: Literal["ner"] = "ner"
    aggregation: Aggregation = Field(
        "simple", description="how tokens become entities, as the HF pipeline's aggregation_strategy"
    )
    ignore_labels: list[str] = Field(default_factory=lambda: ["O"], description="labels never reported")


ENTITY = pa.struct(
    [
        ("label", pa.string()),
        ("text", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("score", pa.float32()),
    ]
)


class Entity(BaseModel):
    label: str
    text: str = Field(description="exactly input[start:end]")
    start: int
    end: int
    score: float


def segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position) of every element when segments of these lengths are laid end to end."""
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return owner, np.arange(total) - starts[owner]


@dataclass
class FlatNer(KindBatch):
    """The NER inputs of a batch, flat: one array per field, with per-document offsets.

    `spans` are each document's windows into its own token stream; `logits` hold the
    content tokens of every window, window after window, document after document.
    """

    ids: np.ndarray  # [T] token ids of every document's stream
    offsets: np.ndarray  # [T, 2] character offsets
    tok_start: np.ndarray  # [D + 1]
    spans: np.ndarray  # [W, 2]
    win_start: np.ndarray  # [D + 1]
    logits: np.ndarray  # [R, C]
    valid: np.ndarray  # bool [D]: documents the model gave a result for

    @classmethod
    def from_results(cls, results: list, streams: list, n_labels: int) -> FlatNer:
        """Gather per-document (spans, logits) and token streams (the in-process and online path)."""
        toks = [t if r is not None else None for t, r in zip(streams, results, strict=True)]
        present = [t for t in toks if t is not None]
        spans = [r[0] for r in results if r is not None]
        logits = [r[1] for r in results if r is not None]
        n_tok = np.array([len(t) if t is not None else 0 for t in toks], dtype=np.int64)
        n_win = np.array([len(r[0]) if r is not None else 0 for r in results], dtype=np.int64)
        return cls(
            ids=np.concatenate([t.ids for t in present]) if present else np.zeros(0, np.int32),
            offsets=np.concatenate([t.offsets for t in present]) if present else np.zeros((0, 2), np.int32),
            tok_start=np.concatenate([[0], np.cumsum(n_tok)]),
            spans=np.concatenate(spans) if spans else np.zeros((0, 2), np.int64),
            win_start=np.concatenate([[0], np.cumsum(n_win)]),
            logits=np.concatenate(logits) if logits else np.zeros((0, n_labels), np.float32),
            valid=np.array([r is not None for r in results], dtype=bool),
        )

    def doc(self, i: int) -> FlatNer:
        """Document i alone (to isolate a failure to its own row)."""
        t0, t1 = self.tok_start[i], self.tok_start[i + 1]
        w0, w1 = self.win_start[i], self.win_start[i + 1]
        r0 = int((self.spans[:w0, 1] - self.spans[:w0, 0]).sum())
        r1 = r0 + int((self.spans[w0:w1, 1] - self.spans[w0:w1, 0]).sum())
        return FlatNer(
            self.ids[t0:t1],
            self.offsets[t0:t1],
            np.array([0, t1 - t0]),
            self.spans[w0:w1],
            np.array([0, w1 - w0]),
            self.logits[r0:r1],
            self.valid[i : i + 1],
        )


@dataclass
class Entities:
    """Entities of a batch, flat: document i owns rows bounds[i]:bounds[i+1]."""

    bounds: np.ndarray  # [D + 1]
    label: list[str]
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray  # float32

    def rows(self, texts: Sequence[object]) -> list[list[dict[str, Any]]]:
        out = []
        for i, text in enumerate(texts):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            out.append(
                [
                    {"label": lab, "text": cast(str, text)[a:b], "start": a, "end": b, "score": sc}
                    for lab, a, b, sc in zip(
                        self.label[lo:hi],
                        self.start[lo:hi].tolist(),
                        self.end[lo:hi].tolist(),
                        self.score[lo:hi].tolist(),
                        strict=True,
                    )
                ]
            )
        return out


class NerDecoder(KindDecoder):
    """Token logits of a batch's windows -> entities with character offsets."""

    def __init__(self, lm: Any) -> None:
        spec: NerSpec = lm.spec
        tok = lm.facts.tokenizer
        self.aggregation = spec.aggregation
        self.ignore = set(spec.ignore_labels)
        n = len(lm.id2label)
        self.labels = [lm.id2label[i] for i in range(n)]
        # group_entities: a label is (B|I, tag); anything not B-/I- is (I, label).
        tags = [lab[2:] if lab.startswith(("B-", "I-")) else lab for lab in self.labels]
        tag_ids = {t: j for j, t in enumerate(dict.fromkeys(tags))}
        self.tag = np.array([tag_ids[t] for t in tags], dtype=np.int64)
        self.is_b = np.array([lab.startswith("B-") for lab in self.labels])
        self.group_name = [lab.split("-", 1)[-1] for lab in self.labels]
        # ignore_labels is applied to the label of a token (none) or of a group (otherwise)
        names = self.labels if self.aggregation == "none" else self.group_name
        self.kept = np.array([nm not in self.ignore for nm in names])
        self.names = names
        self.unk_id = tok.unk_id if tok.unk_id is not None else -1
        self.word_aware = bool(tok.subword_prefix)
        if self.word_aware:
            self.token_len = np.array(tok.token_lens, dtype=np.int64)

    def decode(self, texts: Sequence[object], batch: KindBatch, ok: np.ndarray) -> NerDecoded:
        assert isinstance(batch, FlatNer)
        return NerDecoded(self.entities(texts, batch), ok & batch.valid, texts)

    def entities(self, texts: Sequence[object], flat: FlatNer) -> Entities:
        """Entities of every document of the batch (documents without windows get none)."""
        n_docs = len(flat.tok_start) - 1
        if len(flat.spans) == 0:
            none = np.zeros(0, np.int64)
            return Entities(np.zeros(n_docs + 1, np.int64), [], none, none, np.zeros(0, np.float32))
        win_doc = np.repeat(np.arange(n_docs), np.diff(flat.win_start))
        win_len = flat.spans[:, 1] - flat.spans[:, 0]
        wid, pos = segments(win_len)  # window of each logits row, and its index in the window
        rows = flat.tok_start[win_doc][wid] + flat.spans[wid, 0] + pos  # into the flat token stream
        ids = flat.ids[rows]
        starts = flat.offsets[rows, 0].astype(np.int64)
        ends = flat.offsets[rows, 1].astype(np.int64)
        scores = softmax(flat.logits)
        opens = np.zeros(len(rows), dtype=bool)  # a window's first token starts a word and a group
        opens[np.cumsum(win_len)[:-1][win_len[1:] > 0]] = True
        if len(rows):
            opens[0] = True
        if self.aggregation in ("none", "simple"):
            label = scores.argmax(axis=1)
            score = scores[np.arange(len(label)), label]
            owner = wid
        else:
            label, score, starts, ends, owner, opens = self._words(
                texts, win_doc, wid, ids, starts, ends, scores, opens
            )
        if self.aggregation == "none":
            keep = self.kept[label]
            e_label, e_start, e_end = label[keep], starts[keep], ends[keep]
            e_score, e_win = score[keep].astype(np.float32), owner[keep]
        else:
            e_label, e_start, e_end, e_score, e_win = self._group(label, score, starts, ends, owner, opens)
        return self._per_document(
            texts, n_docs, win_doc[e_win], e_label, e_start, e_end, e_score, np.diff(flat.win_start)
        )

    def _words(self, texts, win_doc, wid, ids, starts, ends, scores, opens):
        """first / average / max: one label per word, words split at every non-subword token."""
        if self.word_aware:
            sub = self.token_len[ids] != (ends - starts)
        else:  # HF's whitespace heuristic for tokenizers without a continuing-subword prefix
            doc_of = win_doc[wid]
            sub = np.array(
                [
                    a > 0 and " " not in texts[d][a - 1 : a + 1]
                    for d, a in zip(doc_of.tolist(), starts.tolist(), strict=True)
                ],
                dtype=bool,
            )
        sub &= ids != self.unk_id
        sub &= ~opens  # the first token of a window always opens a word
        first = np.flatnonzero(~sub)
        last = np.append(first[1:], len(ids)) - 1
        if self.aggregation == "first":
            label = scores[first].argmax(axis=1)
            score = scores[first, label]
        elif self.aggregation == "average":
            counts = (last - first + 1)[:, None]
            mean = np.add.reduceat(scores, first, axis=0) / counts
            label = mean.argmax(axis=1)
            score = mean[np.arange(len(first)), label]
        else:  # max: the token with the highest score decides (first such token on ties)
            tok_max = scores.max(axis=1)
            word_of = np.cumsum(~sub) - 1
            word_max = np.maximum.reduceat(tok_max, first)
            hits = np.flatnonzero(tok_max == word_max[word_of])
            _, pick = np.unique(word_of[hits], return_index=True)
            best = hits[pick]
            label = scores[best].argmax(axis=1)
            score = tok_max[best]
        return label, score, starts[first], ends[last], wid[first], opens[first]

    def _group(self, label, score, starts, ends, owner, opens):
        """HF group_entities: a run continues while the tag stays the same and no B- starts."""
        tag = self.tag[label]
        cut = opens.copy()
        cut[1:] |= (tag[1:] != tag[:-1]) | self.is_b[label[1:]]
        if len(cut):
            cut[0] = True
        first = np.flatnonzero(cut)
        last = np.append(first[1:], len(label)) - 1
        mean = np.add.reduceat(score.astype(np.float32), first) / (last - first + 1)
        glabel = label[first]
        keep = self.kept[glabel]
        return (
            glabel[keep],
            starts[first][keep],
            ends[last][keep],
            mean[keep].astype(np.float32),
            owner[first][keep],
        )

    def _per_document(self, texts, n_docs, doc, label, start, end, score, n_windows) -> Entities:
        counts = np.bincount(doc, minlength=n_docs)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        names = [self.names[j] for j in label.tolist()]
        multi = np.flatnonzero((n_windows > 1) & (counts > 1))
        if len(multi) == 0:
            return Entities(bounds, names, start, end, score)
        # Documents with several windows: HF's aggregate_overlapping_entities, one document at a time.
        parts: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = []
        new_counts = counts.copy()
        cursor = 0
        for i in multi.tolist():
            lo, hi = bounds[i], bounds[i + 1]
            parts.append((names[cursor:lo], start[cursor:lo], end[cursor:lo], score[cursor:lo]))
            merged = merge_overlapping(
                [
                    {"label": n, "start": a, "end": b, "score": s}
                    for n, a, b, s in zip(
                        names[lo:hi],
                        start[lo:hi].tolist(),
                        end[lo:hi].tolist(),
                        score[lo:hi].tolist(),
                        strict=True,
                    )
                ]
            )
            parts.append(
                (
                    [m["label"] for m in merged],
                    np.array([m["start"] for m in merged], np.int64),
                    np.array([m["end"] for m in merged], np.int64),
                    np.array([m["score"] for m in merged], np.float32),
                )
            )
            new_counts[i] = len(merged)
            cursor = hi
        parts.append((names[cursor:], start[cursor:], end[cursor:], score[cursor:]))
        return Entities(
            np.concatenate([[0], np.cumsum(new_counts)]),
            [n for p in parts for n in p[0]],
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
            np.concatenate([p[3] for p in parts]).astype(np.float32),
        )


def merge_overlapping(entities: list[dict]) -> list[dict]:
    """HF aggregate_overlapping_entities: of overlapping entities keep the longer, then the higher score."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    kept = []
    prev = entities[0]
    for ent in entities:
        if prev["start"] <= ent["start"] < prev["end"]:
            cur_len, prev_len = ent["end"] - ent["start"], prev["end"] - prev["start"]
            if cur_len > prev_len or (cur_len == prev_len and ent["score"] > prev["score"]):
                prev = ent
        else:
            kept.append(prev)
            prev = ent
    kept.append(prev)
    return kept


def entities_to_array(found: Entities, keep: np.ndarray, texts: Sequence[object]) -> pa.Array:
    """The entities column straight from the flat entities: no dict per entity."""
    n = len(keep)
    counts = np.diff(found.bounds)
    owner = np.repeat(np.arange(n), counts)
    rows = np.flatnonzero(keep[owner])
    owner = owner[rows]
    starts, ends = found.start[rows], found.end[rows]
    struct = pa.StructArray.from_arrays(
        [
            pa.array([found.label[r] for r in rows.tolist()], pa.string()),
            pa.array(
                [  # a row with entities had a str text
                    cast(str, texts[d])[a:b]
                    for d, a, b in zip(owner.tolist(), starts.tolist(), ends.tolist(), strict=True)
                ],
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


@dataclass
class NerDecoded(KindDecoded):
    """Entities stay flat (`found`, and `keep`: which documents report theirs) until asked
    for as dicts, so the batch job turns them into Arrow columns without a dict per entity."""

    found: Entities
    keep: np.ndarray  # bool [N]
    texts: Sequence[object]

    def values(self, role: str) -> list[Any]:
        rows = self.found.rows(self.texts)
        return [rows[i] if k else None for i, k in enumerate(self.keep.tolist())]

    def array(self, role: str, type_: pa.DataType) -> pa.Array:
        return entities_to_array(self.found, self.keep, self.texts)


class Ner(Kind):
    name = "ner"
    default_name = "ner"
    spec = NerSpec
    per_token = True
    endpoint = "ner"
    always_in_output = True
    needs_offsets = True
    gate = ("entity_f1", 0.98)

    def first_window_only(self, spec: ModelSpec) -> bool:
        return False

    def reduce(
        self, logits: list[np.ndarray], spans: np.ndarray, framing: Framing
    ) -> tuple[np.ndarray, np.ndarray]:
        """(window spans, content-token logits of every window laid end to end)."""
        head, tail = framing.prefix.shape[0], framing.suffix.shape[0]
        parts = [lg[head : lg.shape[0] - tail] for lg in logits]
        return spans, parts[0] if len(parts) == 1 else np.concatenate(parts)

    def roles(self, spec: ModelSpec | None) -> list[tuple[str, pa.DataType]]:
        return [("entities", pa.list_(ENTITY))]

    def default_columns(self) -> dict[str, str]:
        return {"entities": "entities"}

    def decoder(self, lm: Any) -> NerDecoder:
        return NerDecoder(lm)

    def to_columns(self, key: str, results: list[Any | None]) -> dict[str, pa.Array]:
        return {
            f"{key}spans": to_list_array(
                [r[0].reshape(-1) if r is not None else None for r in results], pa.int64()
            ),
            f"{key}logits": to_list_array(
                [r[1].reshape(-1) if r is not None else None for r in results], pa.float32(), large=True
            ),
        }

    def from_columns(
        self, key: str, table: pa.Table, stream: tuple[str, str | None], n_labels: int
    ) -> FlatNer:
        ids_col, offsets_col = stream
        assert offsets_col is not None, "NER decoding needs the token stream's offsets"
        spans, span_offs, valid = flat_list(table.column(f"{key}spans"))
        ids, tok_start, _ = flat_list(table.column(ids_col))
        offsets, _, _ = flat_list(table.column(offsets_col))
        logits, _, _ = flat_list(table.column(f"{key}logits"))
        return FlatNer(
            ids=ids,
            offsets=offsets.reshape(-1, 2),
            tok_start=tok_start,
            spans=spans.reshape(-1, 2),
            win_start=span_offs // 2,
            logits=logits.reshape(-1, n_labels),
            valid=valid,
        )

    def from_results(self, results: list[Any | None], streams: list[Tokens | None], n_labels: int) -> FlatNer:
        return FlatNer.from_results(results, streams, n_labels)

    def agreement(
        self, rows: list[dict[str, Any]], ref: list[dict[str, Any]], columns: dict[str, str]
    ) -> dict[str, float]:
        """Exact-span entity F1 (no entity in either run is full agreement, not an F1 of 0)."""
        gold, pred = spans(ref, columns["entities"]), spans(rows, columns["entities"])
        return {"entity_f1": entity_f1(gold, pred)["f1"] if any(gold) or any(pred) else 1.0}

    hf_task = "token-classification"
    hf_nests_one = False  # a single text's answer is its list of entities

    def hf_spec(self, lm: Any, parameters: dict[str, Any]) -> ModelSpec:
        """`aggregation_strategy` and `ignore_labels` per request; `stride` is the config's."""
        known = {"aggregation_strategy", "ignore_labels", "stride"}
        if unknown := sorted(set(parameters) - known):
            raise HfParameterError(
                422, f"unknown parameter(s) {unknown}; token-classification takes {sorted(known)}"
            )
        spec: NerSpec = lm.spec
        update: dict[str, Any] = {}
        strategy = parameters.get("aggregation_strategy")
        if strategy is not None:
            if strategy not in ("none", "simple", "first", "average", "max"):
                raise HfParameterError(
                    422, f"aggregation_strategy must be none, simple, first, average or max, not {strategy!r}"
                )
            update["aggregation"] = strategy
        ignore = parameters.get("ignore_labels")
        if ignore is not None:
            if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
                raise HfParameterError(422, f"ignore_labels must be a list of labels, not {ignore!r}")
            update["ignore_labels"] = ignore
        stride = parameters.get("stride")
        if stride is not None and stride != spec.stride:
            raise HfParameterError(
                400,
                f"stride is this model's window overlap, set by its config (models.{lm.name}.stride = "
                f"{spec.stride}); a request cannot change it",
            )
        return spec.model_copy(update=update)

    def hf_answer(self, row: dict[str, Any], columns: dict[str, str], context: HfContext) -> Any:
        """The pipeline's entities: `entity_group` (`entity`, a token's own, without aggregation),
        score, `word` as transformers spells it (the token, or the group's tokens decoded),
        start, end."""
        per_token = isinstance(context.spec, NerSpec) and context.spec.aggregation == "none"
        out = []
        for e in row.get(columns["entities"]) or []:
            tokens = context.tokens(e["start"], e["end"])
            word = tokens[0] if per_token and tokens else context.decode(tokens)
            tag = {"entity": e["label"]} if per_token else {"entity_group": e["label"]}
            out.append({**tag, "score": e["score"], "word": word, "start": e["start"], "end": e["end"]})
        return out

    def online_fields(self) -> dict[str, Any]:
        return {"entities": (list[Entity] | None, None)}

    def show(self, row: dict[str, Any], columns: dict[str, str]) -> str:
        ents = row.get(columns["entities"]) or []
        listed = ", ".join(f"{e['text']}/{e['label']}" for e in ents[:6]) + (" ..." if len(ents) > 6 else "")
        return f"{columns['entities']}=[{listed}]"
