"""Tokenize once, window by index: windows equal HF overflow windows; offsets index the original text."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from pipeline.encode import Encoder, framing_of, window_spans
from pipeline.model_facts import TokenizerFacts


@pytest.fixture(scope="module")
def tok(tiny_models):
    return AutoTokenizer.from_pretrained(str(tiny_models[1]))


def encoder(tok) -> Encoder:
    return Encoder({"m": TokenizerFacts.of(tok)}, 10**6)


def test_windows_equal_hf_overflow(tok):
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta Zürich ﬁne".split()
    framing = framing_of(TokenizerFacts.of(tok))
    assert framing.n_special == 2
    enc = encoder(tok)
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 60)))
        max_len = rng.randint(4, 24)
        stride = rng.randint(0, max_len - 3)
        ref = tok(text, truncation=True, max_length=max_len, stride=stride, return_overflowing_tokens=True)
        (doc,) = enc.encode([text])
        spans = window_spans(len(doc.streams["m"]), max_len, stride, framing.n_special, first_only=False)
        ours = [framing.frame(doc.streams["m"].ids[s:e]).tolist() for s, e in spans]
        assert ours == ref["input_ids"], (text, max_len, stride)


def test_first_only_is_hf_truncation(tok):
    text = "one two three four five six seven eight nine ten"
    (doc,) = encoder(tok).encode([text])
    framing = framing_of(TokenizerFacts.of(tok))
    ((s, e),) = window_spans(len(doc.streams["m"]), 6, 0, 2, first_only=True)
    assert (
        framing.frame(doc.streams["m"].ids[s:e]).tolist()
        == tok(text, truncation=True, max_length=6)["input_ids"]
    )


def test_offsets_index_the_original_string(tok, corpus):
    for text, doc in zip(corpus, encoder(tok).encode(corpus), strict=True):
        offs = doc.streams["m"].offsets
        assert (offs[:, 0] <= offs[:, 1]).all() and (offs[:, 1] <= len(text)).all()
        tokens = tok.convert_ids_to_tokens(doc.streams["m"].ids.tolist())
        for (a, b), t in zip(offs.tolist(), tokens, strict=True):
            piece = text[a:b]
            assert piece.strip() == piece and piece, (text, t, a, b)


def test_empty_and_whitespace_have_no_tokens_but_one_window(tok):
    docs = encoder(tok).encode(["", " \t\n", "\x00\x07"])
    for d in docs:
        assert d.error is None and len(d.streams["m"]) == 0
        assert window_spans(0, 512, 128, 2, False).tolist() == [[0, 0]]


def test_streams_equal_the_tokenizers_own_call(tiny_models, corpus, tmp_path):
    """The Rust backend called directly gives what `tok(texts, add_special_tokens=False)` gives, also
    for a tokenizer.json that asks for truncation and padding (which that call switches off)."""
    import json
    import shutil

    src = tiny_models[1]
    dst = tmp_path / "truncating"
    shutil.copytree(src, dst)
    state = json.loads((dst / "tokenizer.json").read_text())
    state["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    state["padding"] = {
        "strategy": {"Fixed": 16},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    (dst / "tokenizer.json").write_text(json.dumps(state))
    texts = [t for t in corpus if t.strip()] + ["[CLS] literal [SEP] tokens [PAD] [MASK]"]
    for path in (src, dst):
        tok = AutoTokenizer.from_pretrained(str(path))
        ref = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        docs = encoder(tok).encode(texts)
        assert [d.streams["m"].ids.tolist() for d in docs] == ref["input_ids"], path
        assert [[tuple(o) for o in d.streams["m"].offsets.tolist()] for d in docs] == [
            [tuple(o) for o in offs] for offs in ref["offset_mapping"]
        ], path
    assert max(len(ids) for ids in ref["input_ids"]) > 16, "long texts are not truncated or padded"
