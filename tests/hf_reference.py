"""The reference: Hugging Face `pipeline(...)` on the same model, mapped to our field names."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)


def hf_ner(path: Path, max_length: int, stride: int | None, aggregation: str):
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.model_max_length = max_length
    model = AutoModelForTokenClassification.from_pretrained(str(path), dtype=torch.float32)
    kwargs = {"aggregation_strategy": aggregation}
    if stride is not None:
        kwargs["stride"] = stride
    pipe = pipeline("token-classification", model=model, tokenizer=tok, device="cpu", **kwargs)

    def run(texts: list[str]) -> list[list[dict]]:
        out = []
        for text in texts:
            ents = pipe(text)
            out.append(
                [
                    {
                        "label": e.get("entity_group", e.get("entity")),
                        "start": int(e["start"]),
                        "end": int(e["end"]),
                        "score": float(e["score"]),
                    }
                    for e in ents
                ]
            )
        return out

    return run


def hf_classify(path: Path, max_length: int, top_k: int | None = None):
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.model_max_length = max_length
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
    pipe = pipeline("text-classification", model=model, tokenizer=tok, device="cpu")

    def run(texts: list[str]):
        if top_k:
            return pipe(texts, truncation=True, top_k=top_k)
        return pipe(texts, truncation=True)

    return run


def assert_entities_equal(ours: list[dict], ref: list[dict], text: str, tol: float = 1e-4) -> None:
    assert len(ours) == len(ref), f"entity count differs for {text[:60]!r}: {len(ours)} vs {len(ref)}"
    for a, b in zip(ours, ref, strict=True):
        assert (a["label"], a["start"], a["end"]) == (b["label"], b["start"], b["end"]), (text[:60], a, b)
        assert abs(a["score"] - b["score"]) <= tol, (text[:60], a, b)
        assert a["text"] == text[a["start"] : a["end"]]
