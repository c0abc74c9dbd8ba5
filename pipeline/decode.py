"""Logits -> labels, scores and entity spans, with Hugging Face pipelines' exact semantics.

`ClassDecoder` follows `TextClassificationPipeline.postprocess`; `NerDecoder` follows
`TokenClassificationPipeline` (gather_pre_entities, aggregate, group_entities, ignore_labels,
aggregate_overlapping_entities) but works on whole windows with NumPy instead of one Python
dict per token. Entity `text` is the exact slice `text[start:end]` of the input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.encode import Encoded, Tokens
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

    def decode(self, logits: np.ndarray) -> tuple[str, float, list[dict[str, Any]] | None]:
        s = self.scores(logits)
        best = int(s.argmax())
        top = None
        if self.top_k:
            order = sorted(range(len(s)), key=lambda i: -float(s[i]))[: self.top_k]  # stable, like HF
            top = [{"label": self.labels[i], "score": float(s[i])} for i in order]
        return self.labels[best], float(s[best]), top


class NerDecoder:
    """Token logits of one document's windows -> entities with character offsets."""

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
        self.unk_id = tok.unk_token_id if tok.unk_token_id is not None else -1
        model = getattr(getattr(tok, "_tokenizer", None), "model", None)
        self.word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        if self.word_aware:
            vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
            self.token_len = np.array([len(t) if t is not None else -1 for t in vocab], dtype=np.int64)

    # -- per document -------------------------------------------------------------------
    def decode(
        self, text: str, tokens: Tokens, spans: np.ndarray, logits: np.ndarray
    ) -> list[dict[str, Any]]:
        entities: list[dict[str, Any]] = []
        k = 0
        for s, e in spans:
            w = int(e - s)
            entities.extend(self._window(text, tokens.ids[s:e], tokens.offsets[s:e], logits[k : k + w]))
            k += w
        if len(spans) > 1:
            entities = merge_overlapping(entities)
        for ent in entities:
            ent["text"] = text[ent["start"] : ent["end"]]
        return [
            {
                "label": x["label"],
                "text": x["text"],
                "start": x["start"],
                "end": x["end"],
                "score": x["score"],
            }
            for x in entities
        ]

    # -- per window ---------------------------------------------------------------------
    def _window(self, text: str, ids: np.ndarray, offsets: np.ndarray, logits: np.ndarray) -> list[dict]:
        if len(ids) == 0:
            return []
        scores = softmax(logits)
        starts, ends = offsets[:, 0].astype(np.int64), offsets[:, 1].astype(np.int64)
        if self.aggregation in ("none", "simple"):
            label = scores.argmax(axis=1)
            score = scores[np.arange(len(label)), label]
        else:
            label, score, starts, ends = self._words(text, ids, starts, ends, scores)
        if self.aggregation == "none":
            names = [self.labels[j] for j in label]
            return [
                {"label": nm, "start": int(a), "end": int(b), "score": float(sc)}
                for nm, a, b, sc in zip(names, starts, ends, score, strict=True)
                if nm not in self.ignore
            ]
        return self._group(label, score, starts, ends)

    def _subword(self, text: str, ids: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        if self.word_aware:
            sub = self.token_len[ids] != (ends - starts)
        else:  # HF's whitespace heuristic for tokenizers without a continuing-subword prefix
            sub = np.array([a > 0 and " " not in text[a - 1 : a + 1] for a in starts.tolist()], dtype=bool)
        sub &= ids != self.unk_id
        return sub

    def _words(self, text, ids, starts, ends, scores):
        """first / average / max: one label per word, words split at every non-subword token."""
        sub = self._subword(text, ids, starts, ends)
        sub[0] = False  # the first token always opens a word
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
        return label, score, starts[first], ends[last]

    def _group(
        self, label: np.ndarray, score: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> list[dict]:
        """HF group_entities: a run continues while the tag stays the same and no B- starts."""
        tag = self.tag[label]
        opens = np.ones(len(label), dtype=bool)
        opens[1:] = (tag[1:] != tag[:-1]) | self.is_b[label[1:]]
        first = np.flatnonzero(opens)
        last = np.append(first[1:], len(label)) - 1
        mean = np.add.reduceat(score.astype(np.float32), first) / (last - first + 1)
        out = []
        for f, lst, sc in zip(first.tolist(), last.tolist(), mean.tolist(), strict=True):
            name = self.group_name[label[f]]
            if name in self.ignore:
                continue
            out.append({"label": name, "start": int(starts[f]), "end": int(ends[lst]), "score": float(sc)})
        return out


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


class Decoder:
    """Builds the output row of each document: label, label_score, entities, error."""

    def __init__(self, models: dict[Task, LoadedModel]) -> None:
        self.cls = ClassDecoder(models["classifier"]) if "classifier" in models else None
        self.ner = NerDecoder(models["ner"]) if "ner" in models else None

    def empty_row(self, error: str | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"label": None, "label_score": None, "entities": None, "error": error}
        if self.cls is not None and self.cls.top_k:
            row["labels"] = None
        return row

    def decode(
        self, texts: Sequence[object], docs: list[Encoded], inferred: list[Inferred]
    ) -> list[dict[str, Any]]:
        rows = []
        for text, doc, inf in zip(texts, docs, inferred, strict=True):
            if inf.error is not None:
                rows.append(self.empty_row(inf.error))
                continue
            try:
                rows.append(self._row(text, doc, inf))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - one bad row must not sink the batch
                rows.append(self.empty_row(f"decode failed: {type(exc).__name__}: {exc}"))
        return rows

    def _row(self, text: str, doc: Encoded, inf: Inferred) -> dict[str, Any]:
        row = self.empty_row()
        if self.cls is not None and inf.cls_logits is not None:
            label, score, top = self.cls.decode(inf.cls_logits)
            row["label"], row["label_score"] = label, score
            if self.cls.top_k:
                row["labels"] = top
        if self.ner is not None and inf.ner_spans is not None:
            row["entities"] = self.ner.decode(text, doc.ner, inf.ner_spans, inf.ner_logits)  # type: ignore[arg-type]
        return row
