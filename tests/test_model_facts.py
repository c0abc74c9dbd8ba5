"""Encode and decode workers build their tokenizers from saved facts, without transformers (and
torch); the facts are read through transformers once per model and node, and are what it uses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config
from transformers import AutoConfig, AutoTokenizer

from pipeline.encode import Encoder
from pipeline.model_facts import ModelFacts

REPO = Path(__file__).resolve().parents[1]
LIGHT_LOAD = """
import json, sys
from pipeline import PipelineConfig
from pipeline.encode import Encoder
from pipeline.models import load_models
models = load_models(PipelineConfig.from_dict(json.loads(sys.argv[1])), weights=False)
(doc,) = Encoder.for_models(models, 10**6).encode(["Hello Zürich"])
print(json.dumps({
    "transformers": "transformers" in sys.modules,
    "torch": "torch" in sys.modules,
    "labels": {n: lm.id2label for n, lm in models.items()},
    "ids": {n: s.ids.tolist() for n, s in doc.streams.items()},
}))
"""


def light_load(cfg: dict) -> dict:
    """Loads the config's models without weights in a fresh process, as a new CPU worker does."""
    out = subprocess.run(
        [sys.executable, "-c", LIGHT_LOAD, json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_saved_facts_are_what_transformers_reads(tiny_models, cased_ner, corpus):
    for path in (*tiny_models, cased_ner):
        tok = AutoTokenizer.from_pretrained(str(path))
        facts = ModelFacts.of(tok, AutoConfig.from_pretrained(str(path)))
        saved = ModelFacts.from_json(facts.to_json())
        assert saved == facts, path
        assert saved.tokenizer.subword_prefix == "##" and len(saved.tokenizer.token_lens) == len(tok)
        texts = [t for t in corpus if t.strip()]
        ref = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        docs = Encoder({"m": saved.tokenizer}, 10**6).encode(texts)
        assert [d.streams["m"].ids.tolist() for d in docs] == ref["input_ids"], path
        assert [d.streams["m"].offsets.tolist() for d in docs] == [
            [list(o) for o in offs] for offs in ref["offset_mapping"]
        ], path


@pytest.mark.slow  # spawns fresh worker-like processes
def test_workers_read_transformers_once_and_then_never_import_it(tiny_models, cased_ner, tmp_path):
    cfg = tiny_config(tiny_models[0], cased_ner) | {"cache_dir": str(tmp_path / "cache")}
    first = light_load(cfg)
    assert first["transformers"], "the first worker on a node reads the model through transformers"
    second = light_load(cfg)
    assert not second["transformers"] and not second["torch"], "later workers must not import them"
    assert second["labels"] == first["labels"] and second["ids"] == first["ids"]
    assert first["ids"]["classifier"] != first["ids"]["ner"], "uncased and cased tokenizers differ"

    saved = sorted((tmp_path / "cache" / "facts").glob("*.json"))
    assert len(saved) == 2, saved
    saved[0].write_text(saved[0].read_text()[:1000])  # torn by a crash mid-write: read the model again
    assert light_load(cfg) == first
    assert ModelFacts.from_json(saved[0].read_text()) is not None


@pytest.mark.slow  # spawns fresh worker-like processes
def test_a_changed_tokenizer_is_read_again(tiny_models, tmp_path):
    model = tmp_path / "ner"
    shutil.copytree(tiny_models[1], model)
    cfg = tiny_config(None, model) | {"cache_dir": str(tmp_path / "cache")}
    before = light_load(cfg)["ids"]["ner"]
    for name, key, part in (
        ("tokenizer.json", "lowercase", "normalizer"),
        ("tokenizer_config.json", "do_lower_case", None),
    ):
        state = json.loads((model / name).read_text())
        (state[part] if part else state)[key] = False
        (model / name).write_text(json.dumps(state))
    after = light_load(cfg)
    assert after["transformers"] and after["ids"]["ner"] != before
