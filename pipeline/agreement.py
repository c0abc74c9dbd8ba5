"""How close two runs' annotations are: the measures the kinds' agreement (the int8 quality
gate) and the demo models' held-out scores are made of."""

from __future__ import annotations

from typing import Any


def entity_f1(gold: list[set], pred: list[set]) -> dict[str, float]:
    """seqeval-style exact-span F1: an entity counts only if type, start and end all match."""
    hit = sum(len(g & p) for g, p in zip(gold, pred, strict=True))
    n_gold, n_pred = sum(len(g) for g in gold), sum(len(p) for p in pred)
    precision = hit / n_pred if n_pred else 0.0
    recall = hit / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def spans(rows: list[dict[str, Any]], key: str = "entities") -> list[set]:
    return [{(e["start"], e["end"], e["label"]) for e in (r.get(key) or [])} for r in rows]


def label_agreement(rows: list[dict[str, Any]], ref: list[dict[str, Any]], key: str = "label") -> float:
    """Share of rows whose label equals the reference's (rows the reference failed excluded; a
    row that only `rows` failed counts as a disagreement)."""
    pairs = [(a[key], b[key]) for a, b in zip(rows, ref, strict=True) if b.get(key) is not None]
    return round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else 1.0
