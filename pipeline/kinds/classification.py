"""Sequence classification: one label and score per document (and the top k labels), with
`TextClassificationPipeline.postprocess` semantics.

Windows: the first only (`long_text: truncate`, what HF does), or every window and the mean
of their logits (`long_text: mean`). Output roles: label, score, and labels with top_k; the
model named `classifier` keeps the columns `label`, `label_score`, `labels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from pipeline.agreement import label_agreement
from pipeline.arrow_lists import flat_list, to_list_array
from pipeline.config import ModelSpec
from pipeline.kinds.base import (
    HfContext,
    HfParameterError,
    Kind,
    KindBatch,
    KindDecoded,
    KindDecoder,
    sigmoid,
    softmax,
)

if TYPE_CHECKING:
    from pipeline.encode import Framing, Tokens
    from pipeline.model_facts import ModelFacts


class ClassifierSpec(ModelSpec):
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    kind: Literal["classification"] = "classification"
    long_text: Literal["truncate", "mean"] = Field(
        "truncate", description="truncate: first window (HF behaviour); mean: mean of window logits"
    )
    stride: int = Field(0, ge=0, description="window overlap, used when long_text is mean")
    top_k: int | None = Field(None, ge=1, description="also return the top k labels with scores")
    function_to_apply: Literal["default", "softmax", "sigmoid", "none"] = Field(
        "default",
        description="as the HF pipeline: default is sigmoid for one label or multi-label, else softmax",
    )


TOP_LABEL = pa.struct([("label", pa.string()), ("score", pa.float32())])


class TopLabel(BaseModel):
    label: str
    score: float


def scoring_function(facts: ModelFacts, requested: str) -> str:
    """softmax | sigmoid | none, decided exactly as TextClassificationPipeline decides."""
    if requested != "default":
        return requested
    if facts.problem_type == "regression":
        return "none"
    if facts.problem_type == "multi_label_classification" or facts.num_labels == 1:
        return "sigmoid"
    return "softmax"


@dataclass
class ClassBatch(KindBatch):
    logits: np.ndarray | None  # [N, C]; rows where valid is False are arbitrary
    valid: np.ndarray  # bool [N]

    def doc(self, i: int) -> ClassBatch:
        logits = self.logits[i : i + 1] if self.logits is not None else None
        return ClassBatch(logits, self.valid[i : i + 1])


@dataclass
class ClassDecoded(KindDecoded):
    label: list[str | None]
    score: list[float | None]
    labels: list[list[dict] | None] | None  # only with top_k

    def values(self, role: str) -> list[Any]:
        if role == "label":
            return list(self.label)
        if role == "score":
            return list(self.score)
        if role == "labels":  # a role only with top_k
            return list(self.labels) if self.labels is not None else [None] * len(self.label)
        raise KeyError(role)


class ClassDecoder(KindDecoder):
    """Document logits -> (label, score, top_k list)."""

    def __init__(self, lm: Any) -> None:
        spec: ClassifierSpec = lm.spec
        self.labels = [lm.id2label[i] for i in range(len(lm.id2label))]
        self.function = scoring_function(lm.facts, spec.function_to_apply)
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

    def decode(self, texts: Sequence[object], batch: KindBatch, ok: np.ndarray) -> ClassDecoded:
        assert isinstance(batch, ClassBatch)
        n = len(ok)
        label: list[str | None] = [None] * n
        score: list[float | None] = [None] * n
        labels: list[list[dict] | None] | None = [None] * n if self.top_k else None
        have = np.flatnonzero(ok & batch.valid)
        if batch.logits is not None and len(have):
            names, scores, top = self.decode_many(batch.logits[have])
            for k, i in enumerate(have.tolist()):
                label[i], score[i] = names[k], float(scores[k])
                if labels is not None and top is not None:
                    labels[i] = top[k]
        return ClassDecoded(label, score, labels)


class Classification(Kind):
    name = "classification"
    default_name = "classifier"
    spec = ClassifierSpec
    per_token = False
    endpoint = "classify"
    always_in_output = True
    needs_offsets = False
    gate = ("label_agreement", 0.99)

    def first_window_only(self, spec: ModelSpec) -> bool:
        assert isinstance(spec, ClassifierSpec)
        return spec.long_text == "truncate"

    def reduce(self, logits: list[np.ndarray], spans: np.ndarray, framing: Framing) -> np.ndarray:
        return logits[0] if len(logits) == 1 else np.mean(np.stack(logits), axis=0)

    def roles(self, spec: ModelSpec | None) -> list[tuple[str, pa.DataType]]:
        roles = [("label", pa.string()), ("score", pa.float32())]
        if isinstance(spec, ClassifierSpec) and spec.top_k:
            roles.append(("labels", pa.list_(TOP_LABEL)))
        return roles

    def default_columns(self) -> dict[str, str]:
        return {"label": "label", "score": "label_score", "labels": "labels"}

    def decoder(self, lm: Any) -> ClassDecoder:
        return ClassDecoder(lm)

    def to_columns(self, key: str, results: list[Any | None]) -> dict[str, pa.Array]:
        return {f"{key}logits": to_list_array(results, pa.float32())}

    def from_columns(
        self, key: str, table: pa.Table, stream: tuple[str, str | None], n_labels: int
    ) -> ClassBatch:
        n = table.num_rows
        values, offs, valid = flat_list(table.column(f"{key}logits"))
        logits = None
        if valid.any():
            logits = np.zeros((n, n_labels), np.float32)
            logits[valid] = values.reshape(-1, n_labels)
        return ClassBatch(logits, valid)

    def from_results(
        self, results: list[Any | None], streams: list[Tokens | None], n_labels: int
    ) -> ClassBatch:
        valid = np.array([r is not None for r in results], dtype=bool)
        logits = None
        if valid.any():
            logits = np.stack([r if r is not None else np.zeros(n_labels, np.float32) for r in results])
        return ClassBatch(logits, valid)

    def agreement(
        self, rows: list[dict[str, Any]], ref: list[dict[str, Any]], columns: dict[str, str]
    ) -> dict[str, float]:
        """Label agreement, and the largest score change where the labels agree."""
        label, score = columns["label"], columns["score"]
        deltas = [
            abs(a[score] - b[score])
            for a, b in zip(rows, ref, strict=True)
            if a.get(label) is not None and a[label] == b.get(label)
        ]
        return {
            "label_agreement": label_agreement(rows, ref, label),
            "max_score_delta": round(max(deltas, default=0.0), 4),
        }

    hf_task = "text-classification"

    def hf_spec(self, lm: Any, parameters: dict[str, Any]) -> ModelSpec:
        """`top_k` and `function_to_apply`, as `pipeline("text-classification")` takes them."""
        known = {"top_k", "function_to_apply"}
        if unknown := sorted(set(parameters) - known):
            raise HfParameterError(
                422, f"unknown parameter(s) {unknown}; text-classification takes {sorted(known)}"
            )
        update: dict[str, Any] = {}
        top_k = parameters.get("top_k")
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise HfParameterError(422, f"top_k must be a positive integer, not {top_k!r}")
            update["top_k"] = top_k
        function = parameters.get("function_to_apply")
        if function is not None:
            if function not in ("softmax", "sigmoid", "none"):
                raise HfParameterError(
                    422, f"function_to_apply must be softmax, sigmoid or none, not {function!r}"
                )
            update["function_to_apply"] = function
        return lm.spec.model_copy(update=update)

    def hf_answer(self, row: dict[str, Any], columns: dict[str, str], context: HfContext) -> Any:
        """The top label, or with top_k the k best, as [{label, score}] (the pipeline's shape)."""
        if row.get(columns["labels"]) is not None:
            return row[columns["labels"]]
        return [{"label": row[columns["label"]], "score": row[columns["score"]]}]

    def online_fields(self) -> dict[str, Any]:
        return {
            "label": (str | None, None),
            "label_score": (float | None, None),
            "labels": (list[TopLabel] | None, Field(None, description="only with top_k")),
        }

    def show(self, row: dict[str, Any], columns: dict[str, str]) -> str:
        score = row.get(columns["score"])
        return f"{columns['label']}={row.get(columns['label'])}" + (
            f" ({score:.2f})" if score is not None else ""
        )
