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
from pipeline.kinds import kind_of
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
    def runner(self) -> InferenceEngine:
        """The runner of an engine built with weights."""
        if self.infer is None:
            raise RuntimeError("this engine was built without weights: it has no runner")
        return self.infer

    @property
    def revisions(self) -> dict[str, str]:
        return {name: lm.revision for name, lm in self.models.items()}

    def describe(self) -> dict[str, Any]:
        """Per model: kind, source, revision, labels, dtype, and what its kind adds (a key the
        kind sets to None is one that does not apply to it)."""
        out = {}
        for name, lm in self.models.items():
            both = lm.describe() | kind_of(lm.spec).describe(lm)
            out[name] = {k: v for k, v in both.items() if v is not None}
        return out


def check_models(cfg: PipelineConfig) -> dict[str, LoadedModel]:
    """Read every model's tokenizer, labels, weight shapes and kind recipe (not the weights) and
    refuse one that cannot work: on the driver, before Ray starts, in one line."""
    return Engine.build(cfg, weights=False).models
