"""Demo models built offline give sensible answers on sentences no training template produced."""

from __future__ import annotations

import json

import pytest

from pipeline import Annotator, PipelineConfig
from pipeline.agreement import entity_f1
from pipeline.demo import build

HAND_WRITTEN_NER = [
    (
        "Angela Merkel met Tim Cook in Berlin.",
        [("Angela Merkel", "PER"), ("Tim Cook", "PER"), ("Berlin", "LOC")],
    ),
    ("The mayor of Paris, Anne Hidalgo, opened the new bridge.", [("Paris", "LOC"), ("Anne Hidalgo", "PER")]),
    (
        "Volkswagen cut its profit forecast, and its shares fell in Frankfurt.",
        [("Volkswagen", "ORG"), ("Frankfurt", "LOC")],
    ),
    (
        "Amara Nwosu from Lagos joined the board of Unilever.",
        [("Amara Nwosu", "PER"), ("Lagos", "LOC"), ("Unilever", "ORG")],
    ),
    (
        "Google opened a research lab in Zurich, led by Elena Petrova.",
        [("Google", "ORG"), ("Zurich", "LOC"), ("Elena Petrova", "PER")],
    ),
    (
        "Priya Raman left Nvidia and moved back to Mumbai.",
        [("Priya Raman", "PER"), ("Nvidia", "ORG"), ("Mumbai", "LOC")],
    ),
    (
        "Lars Eriksson, a lawyer from Stockholm, sued Spotify.",
        [("Lars Eriksson", "PER"), ("Stockholm", "LOC"), ("Spotify", "ORG")],
    ),
    (
        "Chinedu Okafor signed for Real Madrid last summer.",
        [("Chinedu Okafor", "PER"), ("Real Madrid", "ORG")],
    ),
    ("Heavy snow closed the airport in Toronto on Thursday.", [("Toronto", "LOC")]),
    ("Ghana and Peru signed a trade agreement.", [("Ghana", "LOC"), ("Peru", "LOC")]),
]
HAND_WRITTEN_TOPICS = [
    ("The striker scored a hat-trick as the home side won the derby 4-0.", "sports"),
    ("She finished the marathon in under two hours and twenty minutes.", "sports"),
    ("The coach was sacked after five straight defeats.", "sports"),
    ("The bank reported a sharp rise in quarterly profit and raised its dividend.", "business"),
    ("Retail sales fell for a third month as consumers cut spending.", "business"),
    ("The airline will buy 40 new jets in a deal worth billions of dollars.", "business"),
    ("Scientists have developed a battery that charges in five minutes.", "sci_tech"),
    ("The new phone ships with a faster chip and an improved camera.", "sci_tech"),
    ("Astronomers spotted water vapour on a planet orbiting a distant star.", "sci_tech"),
    ("The president called for a ceasefire as refugees fled across the border.", "world"),
    ("Opposition parties boycotted the election, citing fraud.", "world"),
    ("Foreign ministers met in Geneva to discuss the humanitarian crisis.", "world"),
]


REDUCED = {"ner_steps": 50, "cls_steps": 14, "sentiment_steps": 14}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "models"
    metrics = build(out, **REDUCED, progress=False, echo=print)  # reduced build for CI time
    print("reduced demo build:", json.dumps(metrics))
    return out


@pytest.fixture(scope="module")
def ann(demo_dir):
    return Annotator(
        PipelineConfig.from_dict(
            {
                "models": {
                    "classifier": {"source": str(demo_dir / "classifier")},
                    "ner": {"source": str(demo_dir / "ner"), "aggregation": "first"},
                }
            }
        )
    )


def test_build_is_cached_and_reports_held_out_scores(demo_dir):
    stamp = json.loads((demo_dir / "build.json").read_text())
    assert stamp["metrics"]["topic_accuracy"] >= 0.8
    assert stamp["metrics"]["entity"]["f1"] >= 0.6
    assert stamp["metrics"]["sentiment_accuracy"] >= 0.6, "three classes: chance is 0.33"
    assert (demo_dir / "ner" / "model.safetensors").exists() and (
        demo_dir / "classifier" / "config.json"
    ).exists()
    assert json.loads((demo_dir / "sentiment" / "config.json").read_text())["id2label"] == {
        "0": "negative",
        "1": "neutral",
        "2": "positive",
    }
    again = build(demo_dir, **REDUCED, progress=False, echo=lambda s: None)
    assert again == stamp["metrics"], "the second call reuses the build"


def test_ner_finds_obvious_entities_in_new_sentences(ann):
    rows = ann.annotate([t for t, _ in HAND_WRITTEN_NER])
    gold = [set(ents) for _, ents in HAND_WRITTEN_NER]
    pred = [{(e["text"], e["label"]) for e in r["entities"]} for r in rows]
    for (text, _), p in zip(HAND_WRITTEN_NER, pred, strict=True):
        print(text, "->", sorted(p))
    scores = entity_f1(gold, pred)
    print("hand-written entity scores:", scores)
    assert scores["recall"] >= 0.75 and scores["precision"] >= 0.75


def test_classifier_gets_obvious_topics_mostly_right(ann):
    rows = ann.annotate([t for t, _ in HAND_WRITTEN_TOPICS])
    right = sum(r["label"] == want for r, (_, want) in zip(rows, HAND_WRITTEN_TOPICS, strict=True))
    print(f"hand-written topics: {right}/{len(rows)}", [r["label"] for r in rows])
    assert right / len(rows) >= 0.75
