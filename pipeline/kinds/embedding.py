"""Sentence embeddings: one vector per document, equal to `SentenceTransformer.encode`.

Pooling (`mean`, `cls` or `max` over the window's tokens, special tokens included, as
sentence-transformers pools) runs where the model runs, so only [B, dim] leaves a GPU.
Normalization (unit length, when the model's `modules.json` ends in Normalize) follows the
reduction: `long_text: truncate` embeds the first window (sentence-transformers truncates at its
`max_seq_length`, which is the default window here too); `mean` embeds every window and takes
their token-weighted mean. Both read the model's sentence-transformers files, and the config's
`pooling:` / `normalize:` override them.

The column is `list<float32>`, not `fixed_size_list<float32>[dim]`: the output schema is set
from the config before any model file is read (the column clash check, a night's null slots),
and the width is the model's. Every vector of a model has its width (`dim` in the lineage and
`/v1/models`); `np.stack(column.to_numpy(zero_copy_only=False))` or
`pyarrow.compute.list_flatten(column).to_numpy().reshape(-1, dim)` turn a column into a matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.arrow_lists import flat_list, to_list_array
from pipeline.config import ModelSpec
from pipeline.kinds.base import HfContext, HfParameterError, Kind, KindBatch, KindDecoded, KindDecoder

if TYPE_CHECKING:
    from pipeline.encode import Framing, Tokens

Pooling = Literal["mean", "cls", "max"]
VECTOR = pa.list_(pa.float32())
SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}


class EmbeddingSpec(ModelSpec):
    auto_class: ClassVar[str] = "AutoModel"
    output_name: ClassVar[str] = "last_hidden_state"
    kind: Literal["embedding"] = "embedding"
    stride: int = Field(0, ge=0, description="window overlap, used when long_text is mean")
    pooling: Pooling | None = Field(
        None, description="default: the model's 1_Pooling/config.json; mean for a plain model"
    )
    normalize: bool | None = Field(
        None, description="unit-length vectors; default: whether the model's modules.json ends in Normalize"
    )
    long_text: Literal["truncate", "mean"] = Field(
        "truncate",
        description="truncate: the first window (what sentence-transformers does at max_seq_length); "
        "mean: the token-weighted mean of every window's vector, then normalized",
    )


@dataclass(frozen=True)
class Recipe:
    """How one model turns token vectors into a document vector."""

    pooling: str
    normalize: bool
    dim: int | None


def recipe(lm: Any) -> Recipe:
    """The config's pooling and normalization, else the model's sentence-transformers files'.
    Refuses (ModelLoadError, one line) what sentence-transformers would compute and we would not."""
    from pipeline.models import ModelLoadError

    spec: EmbeddingSpec = lm.spec
    found = lm.facts.sentence or {}
    other = [m for m in found.get("modules", []) if m not in SUPPORTED_MODULES]
    if other:
        raise ModelLoadError(
            f"models.{lm.name}: {spec.source} is a sentence-transformers model with modules "
            f"{other} after pooling; only Transformer, Pooling and Normalize are supported"
        )
    pooling = spec.pooling or found.get("pooling") or "mean"
    if pooling not in ("mean", "cls", "max"):
        raise ModelLoadError(
            f"models.{lm.name}: {spec.source} pools with {pooling}; supported: mean, cls, max "
            "(set models.<name>.pooling to override)"
        )
    normalize = spec.normalize if spec.normalize is not None else bool(found.get("normalize"))
    return Recipe(pooling, normalize, found.get("dim") or lm.facts.hidden_size)


def pooled(pooling: str) -> Any:
    """`(model output, attention mask) -> [B, H]` fp32, as sentence-transformers' Pooling."""
    import torch

    def pool(out: Any, mask: Any) -> Any:
        tokens = out.last_hidden_state.float()
        if pooling == "cls":
            return tokens[:, 0]
        keep = mask.unsqueeze(-1).to(tokens.dtype)
        if pooling == "max":
            return torch.where(keep.bool(), tokens, torch.full_like(tokens, -1e9)).max(dim=1).values
        return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1e-9)

    return pool


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (torch.nn.functional.normalize's eps)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


@dataclass
class VectorBatch(KindBatch):
    vectors: np.ndarray  # [N, dim] float32; rows where valid is False are arbitrary
    valid: np.ndarray  # bool [N]

    def doc(self, i: int) -> VectorBatch:
        return VectorBatch(self.vectors[i : i + 1], self.valid[i : i + 1])


@dataclass
class VectorsDecoded(KindDecoded):
    vectors: np.ndarray
    present: np.ndarray  # bool [N]: a vector for this document

    def values(self, role: str) -> list[Any]:
        return [v.tolist() if ok else None for v, ok in zip(self.vectors, self.present, strict=True)]

    def array(self, role: str, type_: pa.DataType) -> pa.Array:
        return to_list_array(
            [v if ok else None for v, ok in zip(self.vectors, self.present, strict=True)], pa.float32()
        )


class VectorDecoder(KindDecoder):
    def __init__(self, lm: Any) -> None:
        self.normalize = recipe(lm).normalize

    def decode(self, texts: Sequence[object], batch: KindBatch, ok: np.ndarray) -> VectorsDecoded:
        assert isinstance(batch, VectorBatch)
        present = ok & batch.valid
        vectors = unit(batch.vectors) if self.normalize and len(batch.vectors) else batch.vectors
        return VectorsDecoded(vectors.astype(np.float32, copy=False), present)


class Embedding(Kind):
    name = "embedding"
    default_name = "embedding"
    spec = EmbeddingSpec
    per_token = False
    endpoint = "embed"
    needs_offsets = False
    # int8 against fp32: the least cosine similarity over the sample's texts. all-MiniLM-L6-v2
    # in int8 reaches 0.987-0.989 (mean 0.995-0.996), and on 600 generated documents 13.8% of
    # each document's 10 nearest neighbours change: a search user sees that. bf16 reaches
    # 0.9999. A model must keep every text above 0.99 for `auto` to embed in int8.
    gate = ("cosine_min", 0.99)

    def output(self, lm: Any) -> Any:
        return pooled(recipe(lm).pooling)

    def first_window_only(self, spec: ModelSpec) -> bool:
        assert isinstance(spec, EmbeddingSpec)
        return spec.long_text == "truncate"

    def reduce(self, logits: list[np.ndarray], spans: np.ndarray, framing: Framing) -> np.ndarray:
        """The one window's vector, or the windows' mean weighted by the tokens each pooled."""
        if len(logits) == 1:
            return logits[0].astype(np.float32, copy=False)
        weights = (spans[:, 1] - spans[:, 0] + framing.n_special).astype(np.float32)
        return (np.stack(logits) * weights[:, None]).sum(axis=0) / weights.sum()

    def roles(self, spec: ModelSpec | None) -> list[tuple[str, pa.DataType]]:
        return [("embedding", VECTOR)]

    def default_columns(self) -> dict[str, str]:
        return {"embedding": "embedding"}

    def decoder(self, lm: Any) -> VectorDecoder:
        return VectorDecoder(lm)

    def describe(self, lm: Any) -> dict[str, Any]:
        r = recipe(lm)
        return {
            "labels": None,  # an embedding model has none
            "dim": r.dim,
            "pooling": r.pooling,
            "normalize": r.normalize,
            "max_length": lm.spec.max_length,
        }

    # -- transport ------------------------------------------------------------------------
    def to_columns(self, key: str, results: list[Any | None]) -> dict[str, pa.Array]:
        return {f"{key}vector": to_list_array(results, pa.float32())}

    def from_columns(
        self, key: str, table: pa.Table, stream: tuple[str, str | None], n_labels: int
    ) -> VectorBatch:
        values, offsets, valid = flat_list(table.column(f"{key}vector"))
        valid = valid.astype(bool)
        width = int(max(np.diff(offsets).max(initial=0), 1))
        vectors = np.zeros((len(valid), width), np.float32)
        vectors[valid] = values.reshape(-1, width)  # every vector of a model has its width
        return VectorBatch(vectors, valid)

    def from_results(
        self, results: list[Any | None], streams: list[Tokens | None], n_labels: int
    ) -> VectorBatch:
        valid = np.array([r is not None for r in results], dtype=bool)
        width = next((len(r) for r in results if r is not None), 1)
        vectors = np.stack([r if r is not None else np.zeros(width, np.float32) for r in results])
        return VectorBatch(vectors.astype(np.float32, copy=False), valid)

    # -- quality and display --------------------------------------------------------------
    def agreement(
        self, rows: list[dict[str, Any]], ref: list[dict[str, Any]], columns: dict[str, str]
    ) -> dict[str, float]:
        """Cosine similarity to the reference's vector, over the rows both embedded."""
        col = columns["embedding"]
        pairs = [
            (np.asarray(a[col], np.float64), np.asarray(b[col], np.float64))
            for a, b in zip(rows, ref, strict=True)
            if a.get(col) is not None and b.get(col) is not None
        ]
        cos = [float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)) for a, b in pairs]
        missing = sum(b.get(col) is not None and a.get(col) is None for a, b in zip(rows, ref, strict=True))
        worst = 0.0 if missing else min(cos, default=1.0)
        return {"cosine_min": round(worst, 6), "cosine_mean": round(float(np.mean(cos)) if cos else 1.0, 6)}

    hf_task = "feature-extraction"

    def hf_spec(self, lm: Any, parameters: dict[str, Any]) -> ModelSpec:
        """`normalize` per request; the rest of the task's parameters only as the model is."""
        known = {
            "normalize",
            "truncate",
            "truncation_direction",
            "dimensions",
            "prompt_name",
            "encoding_format",
        }
        if unknown := sorted(set(parameters) - known):
            raise HfParameterError(
                422, f"unknown parameter(s) {unknown}; feature-extraction takes {sorted(known)}"
            )
        spec: EmbeddingSpec = lm.spec
        p = parameters
        if p.get("truncate") is False:
            raise HfParameterError(
                400,
                f"texts past {spec.max_length} tokens are truncated or averaged over windows as the model's "
                f"config says (models.{lm.name}.long_text = {spec.long_text}), not refused",
            )
        if p.get("truncation_direction") not in (None, "right", "Right"):
            raise HfParameterError(400, "truncation keeps a text's start (truncation_direction right)")
        dim = recipe(lm).dim
        if p.get("dimensions") is not None and p["dimensions"] != dim:
            raise HfParameterError(
                400, f"dimensions: {lm.name}'s vectors have {dim} dimensions, not {p['dimensions']}"
            )
        if p.get("prompt_name") is not None:
            raise HfParameterError(400, "prompt_name: no prompts are configured; put the prompt in the text")
        if p.get("encoding_format") not in (None, "float"):
            raise HfParameterError(
                400, "feature-extraction answers in floats; /v1/embeddings also gives base64"
            )
        normalize = p.get("normalize")
        if normalize is not None and not isinstance(normalize, bool):
            raise HfParameterError(422, f"normalize must be true or false, not {normalize!r}")
        return spec.model_copy(update={} if normalize is None else {"normalize": normalize})

    def hf_answer(self, row: dict[str, Any], columns: dict[str, str], context: HfContext) -> Any:
        return row[columns["embedding"]]

    def online_fields(self) -> dict[str, Any]:
        return {"embedding": (list[float] | None, None)}

    def show(self, row: dict[str, Any], columns: dict[str, str]) -> str:
        vector = row.get(columns["embedding"])
        if vector is None:
            return f"{columns['embedding']}=null"
        head = ", ".join(f"{v:.3f}" for v in vector[:3])
        return f"{columns['embedding']}=[{head}, ...] ({len(vector)}-d)"
