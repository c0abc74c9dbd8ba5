"""In-process annotation: encode -> infer -> decode on a list of texts.

The same three steps that the Ray Data job and the Serve API compose; use this for
notebooks, scripts and tests, and as the reference the distributed paths must equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.engine import Engine
from pipeline.infer import InferenceEngine, RunStats
from pipeline.models import LoadedModel

DOCS_PER_CHUNK = 1024  # enough windows per chunk for length sorting to pack batches tightly


class Annotator:
    """Loads the configured models once; `annotate` returns one result dict per input, in order."""

    def __init__(self, cfg: PipelineConfig, models: dict[str, LoadedModel] | None = None) -> None:
        if cfg.runtime.num_threads:
            import torch

            torch.set_num_threads(cfg.runtime.num_threads)
        self.cfg = cfg
        self.built = built = Engine.build(cfg, models=models)
        self.models, self.encoder, self.decoder = built.models, built.encoder, built.decoder
        self.engine: InferenceEngine = built.runner

    def annotate(self, texts: Iterable[object] | str) -> list[dict[str, Any]]:
        """Never raises for a bad row: null, non-string or oversized texts come back with `error` set."""
        items = [texts] if isinstance(texts, str) else list(texts)
        rows: list[dict[str, Any]] = []
        for lo in range(0, len(items), DOCS_PER_CHUNK):
            chunk = items[lo : lo + DOCS_PER_CHUNK]
            docs = self.encoder.encode(chunk)
            rows.extend(self.decoder.decode(chunk, docs, self.engine.infer(docs)))
        return rows

    def stats(self) -> RunStats:
        return self.engine.stats()

    def describe(self) -> dict[str, Any]:
        return self.built.describe()
