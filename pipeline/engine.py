"""The one place that puts together what turns texts into answers for a config.

Models, encoder, runner (`InferenceEngine`) and decoder are built here for `Annotator`, the
batch job's stages and both Serve deployments, so how they fit together is decided once.
Without weights (encode and decode workers, the Serve ingress) only tokenizers and label
maps are loaded, and there is no runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.decode import Decoder
from pipeline.encode import Encoder
from pipeline.infer import InferenceEngine
from pipeline.models import LoadedModel, load_models


@dataclass
class Engine:
    models: dict[str, LoadedModel]
    encoder: Encoder
    decoder: Decoder
    infer: InferenceEngine | None = None  # None when built without weights

    @classmethod
    def build(
        cls, cfg: PipelineConfig, *, weights: bool = True, models: dict[str, LoadedModel] | None = None
    ) -> Engine:
        models = models if models is not None else load_models(cfg, weights=weights)
        return cls(
            models=models,
            encoder=Encoder.for_models(models, cfg.runtime.max_chars),
            decoder=Decoder(models, cfg.models),
            infer=InferenceEngine(models, cfg.runtime) if weights else None,
        )

    @property
    def revisions(self) -> dict[str, str]:
        return {name: lm.revision for name, lm in self.models.items()}

    def describe(self) -> dict[str, Any]:
        return {name: lm.describe() for name, lm in self.models.items()}
