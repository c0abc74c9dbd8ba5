"""Reduced precision on CPU (bf16, fp16) agrees with fp32 on labels for nearly all rows."""

from __future__ import annotations

import random

import pytest
from conftest import tiny_config

from pipeline import Annotator, PipelineConfig
from pipeline.kinds import agreement


def generated_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    words = (
        "Angela Merkel met Tim Cook in Berlin on Monday . Apple and Siemens signed a deal in Munich "
        "the match ended with a late goal by Lionel Messi for Inter Miami while markets fell in Tokyo"
    ).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) for _ in range(n)]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_agrees_with_fp32(tiny_models, dtype):
    texts = generated_texts(200)
    ref = Annotator(PipelineConfig.from_dict(tiny_config(*tiny_models))).annotate(texts)
    low = Annotator(PipelineConfig.from_dict(tiny_config(*tiny_models, runtime__dtype=dtype))).annotate(texts)
    scores = agreement(low, ref)
    label_rate, entity_rate = scores["label_agreement"], scores["entity_f1"]
    print(
        f"\n{dtype} vs fp32 on {len(texts)} rows: classification labels {label_rate:.1%}, "
        f"entity F1 {entity_rate:.1%}"
    )
    assert label_rate >= 0.95
    assert entity_rate >= 0.95
