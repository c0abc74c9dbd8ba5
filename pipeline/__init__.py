"""Label text corpora with BERT sequence classification, NER and sentence embeddings, in batch on Ray Data and online on Ray Serve."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

IMPORTED_AT = time.time()  # when this process first imported the package (pipeline.startup)

from pipeline.config import ConfigError, PipelineConfig  # noqa: E402 - after the import stamp
from pipeline.kinds import KINDS as KINDS  # noqa: E402 - registers the model kinds with the config

__version__ = "0.1.0"
__all__ = ["Annotator", "ConfigError", "PipelineConfig", "__version__"]

if TYPE_CHECKING:
    from pipeline.annotator import Annotator


def __getattr__(name: str):
    # Lazy: importing the package (e.g. for config validation) must not pull in torch.
    if name == "Annotator":
        from pipeline.annotator import Annotator

        return Annotator
    raise AttributeError(name)
