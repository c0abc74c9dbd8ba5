"""Logits -> labels, scores and entity spans, with Hugging Face pipelines' exact semantics.

`ClassDecoder` follows `TextClassificationPipeline.postprocess`; `NerDecoder` follows
`TokenClassificationPipeline` (gather_pre_entities, aggregate, group_entities, ignore_labels,
aggregate_overlapping_entities). Both work on a whole batch at once: the tokens of every
window of every document sit in flat arrays (`FlatNer`), so softmax, word grouping and
entity grouping are a handful of NumPy calls per batch, not per document; window
boundaries always cut words and entities, exactly as HF's per-window processing does.
Only documents with several windows go through the (Python) overlap merge. Entity `text`
is the exact slice `text[start:end]` of the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.encode import Encoded
from pipeline.infer import Inferred

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pipeline.config import ClassifierSpec, NerSpec
    from pipeline.models import LoadedModel, Task


def softmax(x: np.ndarray) -> np.ndarray:
    """fp32 softmax over the last axis, row max subtracted (as HF does)."""
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float32, copy=False)))


def scoring_function(config: Any, requested: str) -> str:
    """softmax | sigmoid | none, decided exactly as TextClassificationPipeline decides."""
    if requested != "default":
        return requested
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position) of every element when segments of these lengths are laid end to end."""
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return owner, np.arange(total) - starts[owner]


class ClassDecoder:
    """Document logits -> (label, score, top_k list)."""

    def __init__(self, lm: LoadedModel) -> None:
        spec: ClassifierSpec = lm.spec  # type: ignore[assignment]
        self.labels = [lm.id2label[i] for i in range(len(lm.id2label))]
        self.function = scoring_function(lm.config, spec.function_to_apply)
        self.top_k = spec.top_k

    def scores(self, logits: np.ndarray) -> np.ndarray:
        if self.function == "softmax":
            return softmax(logits)
        if self.function == "sigmoid":
            return sigmoid(logits)
        return logits.astype(np.float32, copy=False)

    def decode_many(self, logits: np.ndarray) -> tuple[list[str], np.ndarray, list[list[dict]] | None]:
        """[N, C] logits -> labels, scores (float32) and, with top_k, the top labels of each."""
        s = self.scores(logits)
        best = s.argmax(axis=1)
        score = s[np.arange(len(best)), best]
        top = None
        if self.top_k:
            order = np.argsort(-s, axis=1, kind="stable")[:, : self.top_k]  # stable, like HF
            top = [
                [{"label": self.labels[i], "score": float(row[i])} for i in o]
                for row, o in zip(s, order, strict=True)
            ]
        return [self.labels[i] for i in best], score, top


@dataclass
class FlatNer:
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

    @classmethod
    def from_docs(cls, docs: list[Encoded], inferred: list[Inferred], n_labels: int) -> FlatNer:
        """Gather per-document arrays (the in-process and online path)."""
        toks = [d.ner if inf.ner_spans is not None else None for d, inf in zip(docs, inferred, strict=True)]
        spans = [inf.ner_spans if t is not None else None for t, inf in zip(toks, inferred, strict=True)]
        logits = [inf.ner_logits for t, inf in zip(toks, inferred, strict=True) if t is not None]
        n_tok = np.array([len(t) if t is not None else 0 for t in toks], dtype=np.int64)
        n_win = np.array([len(s) if s is not None else 0 for s in spans], dtype=np.int64)
        present = [t for t in toks if t is not None]
        return cls(
            ids=np.concatenate([t.ids for t in present]) if present else np.zeros(0, np.int32),
            offsets=np.concatenate([t.offsets for t in present]) if present else np.zeros((0, 2), np.int32),
            tok_start=np.concatenate([[0], np.cumsum(n_tok)]),
            spans=np.concatenate([s for s in spans if s is not None])
            if present
            else np.zeros((0, 2), np.int64),
            win_start=np.concatenate([[0], np.cumsum(n_win)]),
            logits=np.concatenate(logits) if logits else np.zeros((0, n_labels), np.float32),
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
                    {"label": lab, "text": text[a:b], "start": a, "end": b, "score": sc}  # type: ignore[index]
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


class NerDecoder:
    """Token logits of a batch's windows -> entities with character offsets."""

    def __init__(self, lm: LoadedModel) -> None:
        spec: NerSpec = lm.spec  # type: ignore[assignment]
        tok = lm.tokenizer
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
        self.unk_id = tok.unk_token_id if tok.unk_token_id is not None else -1
        model = getattr(getattr(tok, "_tokenizer", None), "model", None)
        self.word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        if self.word_aware:
            vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
            self.token_len = np.array([len(t) if t is not None else -1 for t in vocab], dtype=np.int64)

    def decode(self, texts: Sequence[object], flat: FlatNer) -> Entities:
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


@dataclass
class Outputs:
    """What the models produced for a batch of documents, column by column."""

    error: list[str | None]
    cls_logits: np.ndarray | None  # [N, C]; rows where cls_valid is False are arbitrary
    cls_valid: np.ndarray  # bool [N]
    ner: FlatNer | None
    ner_valid: np.ndarray  # bool [N]

    @classmethod
    def from_inferred(
        cls, docs: list[Encoded], inferred: list[Inferred], n_ner_labels: int | None
    ) -> Outputs:
        """From per-document results (the in-process and online path)."""
        cls_valid = np.array([inf.cls_logits is not None for inf in inferred], dtype=bool)
        cls_logits = None
        if cls_valid.any():
            width = next(inf.cls_logits for inf in inferred if inf.cls_logits is not None).shape[0]
            cls_logits = np.stack(
                [
                    inf.cls_logits if inf.cls_logits is not None else np.zeros(width, np.float32)
                    for inf in inferred
                ]
            )
        ner_valid = np.array([inf.ner_spans is not None for inf in inferred], dtype=bool)
        ner = FlatNer.from_docs(docs, inferred, n_ner_labels) if n_ner_labels else None
        return cls([inf.error for inf in inferred], cls_logits, cls_valid, ner, ner_valid)

    def doc(self, i: int) -> Outputs:
        logits = self.cls_logits[i : i + 1] if self.cls_logits is not None else None
        ner = self.ner.doc(i) if self.ner is not None else None
        return Outputs(
            self.error[i : i + 1], logits, self.cls_valid[i : i + 1], ner, self.ner_valid[i : i + 1]
        )


@dataclass
class Decoded:
    """A batch's results, column by column; `rows()` gives the per-document dicts.

    Entities stay flat (`found`, `keep`: which documents report theirs) until asked for
    as dicts, so the batch job can turn them into Arrow columns without a dict per entity.
    """

    label: list[str | None]
    label_score: list[float | None]
    labels: list[list[dict] | None] | None  # only with top_k
    error: list[str | None]
    texts: Sequence[object]
    found: Entities | None = None
    keep: np.ndarray | None = None
    listed: list[list[dict] | None] | None = None  # entities as dicts, when built that way

    @property
    def entities(self) -> list[list[dict] | None]:
        if self.listed is None:
            if self.found is None or self.keep is None:
                self.listed = [None] * len(self.error)
            else:
                rows = self.found.rows(self.texts)
                self.listed = [rows[i] if k else None for i, k in enumerate(self.keep.tolist())]
        return self.listed

    @classmethod
    def failed(cls, text: object, error: str, top_k: bool) -> Decoded:
        return cls([None], [None], [None] if top_k else None, [error], [text], listed=[None])

    @classmethod
    def concat(cls, parts: list[Decoded]) -> Decoded:
        def join(field: str) -> list:
            return [v for p in parts for v in getattr(p, field)]

        labels = None if parts[0].labels is None else join("labels")
        return cls(
            join("label"), join("label_score"), labels, join("error"), join("texts"), listed=join("entities")
        )

    def rows(self) -> list[dict[str, Any]]:
        out = []
        entities = self.entities
        for i in range(len(self.error)):
            row: dict[str, Any] = {
                "label": self.label[i],
                "label_score": self.label_score[i],
                "entities": entities[i],
                "error": self.error[i],
            }
            if self.labels is not None:
                row["labels"] = self.labels[i]
            out.append(row)
        return out


class Decoder:
    """Builds each document's results: label, label_score, entities, error."""

    def __init__(self, models: dict[Task, LoadedModel]) -> None:
        self.cls = ClassDecoder(models["classifier"]) if "classifier" in models else None
        self.ner = NerDecoder(models["ner"]) if "ner" in models else None
        self.top_k = self.cls is not None and bool(self.cls.top_k)

    def decode(
        self, texts: Sequence[object], docs: list[Encoded], inferred: list[Inferred]
    ) -> list[dict[str, Any]]:
        """One result dict per document (the in-process and online path)."""
        n_labels = len(self.ner.labels) if self.ner is not None else None
        return self.decode_outputs(texts, Outputs.from_inferred(docs, inferred, n_labels)).rows()

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
                    error = f"decode failed: {type(exc).__name__}: {exc}"
                    parts.append(Decoded.failed(texts[i], error, self.top_k))
            return Decoded.concat(parts)

    def _decode(self, texts: Sequence[object], out: Outputs) -> Decoded:
        n = len(out.error)
        ok = np.array([e is None for e in out.error], dtype=bool)
        label: list[str | None] = [None] * n
        label_score: list[float | None] = [None] * n
        labels: list[list[dict] | None] | None = [None] * n if self.top_k else None
        have = np.flatnonzero(ok & out.cls_valid)
        if self.cls is not None and out.cls_logits is not None and len(have):
            names, scores, top = self.cls.decode_many(out.cls_logits[have])
            for k, i in enumerate(have.tolist()):
                label[i], label_score[i] = names[k], float(scores[k])
                if labels is not None and top is not None:
                    labels[i] = top[k]
        decoded = Decoded(label, label_score, labels, list(out.error), texts)
        if self.ner is not None and out.ner is not None:
            decoded.found = self.ner.decode(texts, out.ner)
            decoded.keep = ok & out.ner_valid
        return decoded
