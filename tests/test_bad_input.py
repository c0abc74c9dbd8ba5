"""Bad input gets a per-row error or a defined result; no row is lost, duplicated or reordered."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_rows_close, tiny_config

from pipeline import Annotator, PipelineConfig
from pipeline.infer import ModelRunner


@pytest.fixture(scope="module")
def ann(tiny_models):
    cfg = tiny_config(*tiny_models, runtime__max_chars=2_000_000)
    cfg["models"]["ner"].update(max_length=512, stride=128)
    return Annotator(PipelineConfig.from_dict(cfg))


def test_bad_rows_get_errors_and_good_rows_survive(ann):
    texts = ["Good text one.", None, 42, "", "   \n\t", b"bytes", "Good text two.", "x" * 2_000_001]
    rows = ann.annotate(texts)
    assert len(rows) == len(texts)
    assert rows[1]["error"] == "text is null"
    assert "string" in rows[2]["error"] and "int" in rows[2]["error"]
    assert "bytes" in rows[5]["error"]
    assert "max_chars" in rows[7]["error"]
    for i in (0, 3, 4, 6):
        assert rows[i]["error"] is None
        assert rows[i]["label"] in {"world", "sports", "business", "sci_tech"}
        assert isinstance(rows[i]["entities"], list)
    assert rows[3]["entities"] == [] and rows[4]["entities"] == []
    for i in (1, 2, 5, 7):
        assert rows[i]["label"] is None and rows[i]["entities"] is None
    assert_rows_close([rows[0]], ann.annotate(["Good text one."]))  # neighbours change nothing


def test_a_single_string_is_one_document(ann):
    rows = ann.annotate("Angela Merkel met Tim Cook in Berlin.")
    assert len(rows) == 1 and rows[0]["error"] is None


def test_one_megabyte_text_is_windowed_not_truncated(ann):
    sentence = "Angela Merkel met Tim Cook in Berlin and Paris. "
    text = sentence * (1_000_000 // len(sentence) + 1)
    assert len(text) >= 1_000_000
    before = ann.stats().sequences
    (row,) = ann.annotate([text])
    assert row["error"] is None
    windows = ann.stats().sequences - before
    n_tokens = len(ann.encoder.encode([text])[0].streams["ner"])
    assert n_tokens > 200_000
    assert windows - 1 >= n_tokens / 510, "NER must cover every token in windows (plus 1 classifier window)"
    ents = row["entities"]
    assert ents and max(e["end"] for e in ents) > len(text) - 200, "entities must reach the end of the text"
    assert all(text[e["start"] : e["end"]] == e["text"] for e in ents)
    starts = [e["start"] for e in ents]
    assert starts == sorted(starts)
    assert all(a["end"] <= b["start"] for a, b in zip(ents, ents[1:], strict=False)), (
        "no overlapping entities after the merge"
    )


class _Poisoned(torch.nn.Module):
    """A real module that fails on one token id, to prove failures stay with their own row."""

    def __init__(self, poison: int) -> None:
        super().__init__()
        self.poison = poison
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        if (input_ids == self.poison).any():
            raise RuntimeError("poisoned input")
        return type("Out", (), {"logits": torch.zeros(input_ids.shape[0], 3) + self.w})()


def test_a_failing_sequence_does_not_sink_its_batch():
    runner = ModelRunner(_Poisoned(7), batch_size=4, pad_id=0, pad_multiple=8, max_length=64)
    seqs = [np.array([1, 2, 3]), np.array([1, 7, 3]), np.array([4, 5]), np.array([9] * 10), np.array([8])]
    results, errors = runner.run(seqs)
    assert errors[1] and "poisoned input" in errors[1]
    assert all(e is None for i, e in enumerate(errors) if i != 1)
    assert results[1] is None and all(r is not None for i, r in enumerate(results) if i != 1)


def test_text_that_is_not_unicode_is_an_input_problem_of_its_row(ann):
    """A lone surrogate (a JSON "\\ud800" escape) or bytes that are not UTF-8 (a Parquet string
    column from a writer that does not validate): the row's error, counted as the data's."""
    import pyarrow as pa

    from pipeline.row_errors import kind_of
    from pipeline.stages import texts_of

    rows = ann.annotate(["Tim Cook \ud800 in Berlin.", "Tim Cook in Berlin."])
    assert rows[0]["error"] == "text is not valid UTF-8: it holds a lone surrogate at character 9"
    assert kind_of(rows[0]["error"]) == "input" and rows[1]["error"] is None
    raw = [b"ok", b"bad \xed\xa0\x80", None]
    offsets = pa.array([0, 2, 9, 9], pa.int32()).buffers()[1]
    column = pa.chunked_array(
        [pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"".join(raw[:2]))])]
    )
    texts = texts_of(column)
    assert texts[0] == "ok" and texts[2] == "" and isinstance(texts[1], bytes)
    (bad,) = ann.annotate([texts[1]])
    assert bad["error"] == "text is not valid UTF-8 (7 bytes)" and bad["label"] is None
