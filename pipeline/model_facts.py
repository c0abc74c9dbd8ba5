"""What encoding and decoding need of a model, as plain data saved once per model and node.

Encode and decode workers and the Serve ingress need a model's tokenizer, special tokens,
vocabulary and labels, never its weights. Reading those through transformers imports torch:
about 4 CPU-s and 350 MB per fresh worker, and a million-document night starts dozens of
workers. So the facts are read through transformers once per model revision and node, saved
as JSON beside the model cache, and every later worker builds its tokenizer from them with
`tokenizers` alone. Read off the Hugging Face objects, they are what transformers would use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any

from filelock import FileLock

FORMAT = 3  # bump when the fields change: older saved facts are then rebuilt
READ_SUFFIXES = (".json", ".txt", ".model")  # config, tokenizer and vocabulary files


@dataclass(frozen=True)
class TokenizerFacts:
    """A fast tokenizer as the pipeline uses it: its Rust state, its special-token template
    around one sequence, and the token lengths NER needs to find word boundaries."""

    state: str  # the Rust tokenizer's JSON (`backend_tokenizer.to_str()`)
    split_special_tokens: bool
    prefix: tuple[int, ...]  # special tokens before one sequence
    suffix: tuple[int, ...]  # and after it
    pad_id: int
    unk_id: int | None
    subword_prefix: str | None  # `##` for WordPiece: tokens that continue a word
    token_lens: tuple[int, ...]  # characters of each id's token (-1: none); only with subword_prefix

    @classmethod
    def of(cls, tok: Any) -> TokenizerFacts:
        prefix, suffix = _template(tok)
        model = getattr(getattr(tok, "_tokenizer", None), "model", None)
        subword = getattr(model, "continuing_subword_prefix", None) or None
        lens: tuple[int, ...] = ()
        if subword:
            lens = tuple(
                len(t) if t is not None else -1 for t in tok.convert_ids_to_tokens(list(range(len(tok))))
            )
        return cls(
            state=tok.backend_tokenizer.to_str(),
            split_special_tokens=bool(getattr(tok, "split_special_tokens", False)),
            prefix=tuple(prefix),
            suffix=tuple(suffix),
            pad_id=int(tok.pad_token_id) if tok.pad_token_id is not None else 0,
            unk_id=tok.unk_token_id,
            subword_prefix=subword,
            token_lens=lens,
        )

    @cached_property
    def canonical(self) -> dict[str, Any]:
        """What decides ids and offsets of `tok(texts, add_special_tokens=False)`: two tokenizers
        with equal canonical forms tokenize every text the same. Parsed once per object (22 ms
        for a BERT vocabulary), however many models it is compared with."""
        state = json.loads(self.state)
        state.pop("truncation", None)
        state.pop("padding", None)
        return {"state": state, "split_special_tokens": self.split_special_tokens}


def _template(tok: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts around one sequence, read off the tokenizer itself."""
    probe = "a"
    inner = tok(probe, add_special_tokens=False)["input_ids"]
    outer = tok(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(outer) - len(inner) + 1):
        if outer[i : i + len(inner)] == inner:
            return outer[:i], outer[i + len(inner) :]
    raise ValueError("cannot find the special-token template of this tokenizer")  # pragma: no cover


@dataclass(frozen=True)
class ModelFacts:
    """A model's tokenizer facts and what its config says about labels and scoring."""

    tokenizer: TokenizerFacts
    id2label: dict[int, str]
    problem_type: str | None
    num_labels: int
    max_positions: int | None
    token_ids: int = 0  # ids the tokenizer can emit: its vocabulary and added tokens
    embedding_rows: int | None = None  # rows of the model's token embedding table
    head_rows: int | None = None  # outputs of its classification head, where the weights have one
    hidden_size: int | None = None  # width of the encoder's token vectors
    sentence: dict[str, Any] | None = None  # its sentence-transformers files, read (sentence_facts)

    @classmethod
    def of(
        cls, tok: Any, config: Any, shapes: dict[str, list[int]] | None = None, sentence: dict | None = None
    ) -> ModelFacts:
        shapes = shapes or {}
        embedding = _shape(shapes, EMBEDDING_NAMES)
        head = _shape(shapes, HEAD_NAMES)
        return cls(
            tokenizer=TokenizerFacts.of(tok),
            id2label={int(k): str(v) for k, v in config.id2label.items()},
            problem_type=getattr(config, "problem_type", None),
            num_labels=int(config.num_labels),
            max_positions=getattr(config, "max_position_embeddings", None),
            token_ids=len(tok),
            embedding_rows=embedding[0] if embedding else getattr(config, "vocab_size", None),
            head_rows=head[0] if head else None,
            hidden_size=getattr(config, "hidden_size", None),
            sentence=sentence,
        )

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT} | asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelFacts:
        data = json.loads(text)
        if data.pop("format", None) != FORMAT:
            raise ValueError("saved model facts of another format")
        tok = data.pop("tokenizer")
        tok = {k: tuple(v) if isinstance(v, list) else v for k, v in tok.items()}
        data["id2label"] = {int(k): v for k, v in data["id2label"].items()}
        return cls(tokenizer=TokenizerFacts(**tok), **data)


EMBEDDING_NAMES = ("word_embeddings.weight",)
HEAD_NAMES = ("classifier.weight", "classifier.out_proj.weight", "score.weight")


def _shape(shapes: dict[str, list[int]], names: tuple[str, ...]) -> list[int] | None:
    return next((shape for key, shape in shapes.items() if key.endswith(names)), None)


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """Every weight's shape, read from the safetensors headers alone (a few KB, no tensors)."""
    shapes: dict[str, list[int]] = {}
    for f in sorted(path.glob("*.safetensors")):
        with f.open("rb") as stream:
            size = int.from_bytes(stream.read(8), "little")
            header = json.loads(stream.read(size))
        shapes.update({k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return shapes


POOLING_MODES = {  # 1_Pooling/config.json's flags -> our name; the others are not supported
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def sentence_facts(path: Path) -> dict[str, Any] | None:
    """What a sentence-transformers folder says of pooling and length: `modules.json` (which
    modules, in order: Normalize at the end means unit vectors), the Pooling module's config,
    `sentence_bert_config.json` (max_seq_length). None for a plain Hugging Face folder."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    out: dict[str, Any] = {"modules": kinds, "normalize": "Normalize" in kinds, "pooling": None}
    pooling = next((m for m, k in zip(modules, kinds, strict=True) if k == "Pooling"), None)
    if pooling is not None:
        config_file = path / str(pooling.get("path", "")) / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        modes = [name for flag, name in POOLING_MODES.items() if config.get(flag)]
        out["pooling"] = "+".join(modes) or None
        out["dim"] = config.get("word_embedding_dimension")
    bert_config = path / "sentence_bert_config.json"
    if bert_config.is_file():
        out["max_seq_length"] = json.loads(bert_config.read_text()).get("max_seq_length")
    return out


def saved_facts(path: Path, revision: str, cache_dir: Path, read: Callable[[], ModelFacts]) -> ModelFacts:
    """The facts of the model at `path`, from this node's cache, or `read` (through transformers)
    and saved there; workers that start together wait on a file lock for the one that reads."""
    target = cache_dir / "facts" / f"{_key(path, revision)}.json"
    found = _load(target)
    if found is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=600):
        found = _load(target)
        if found is not None:
            return found
        facts = read()
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        tmp.write_text(facts.to_json())
        tmp.replace(target)
        return facts


def _load(target: Path) -> ModelFacts | None:
    try:
        return ModelFacts.from_json(target.read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None  # absent, torn or of another format: read the model again


def _key(path: Path, revision: str) -> str:
    """Names one model directory's facts: its revision, and the size and mtime of every file
    they are read from (a revision need not cover each), under these library versions."""
    files = sorted(
        (f.name, st.st_size, st.st_mtime_ns)
        for f in path.iterdir()
        if f.suffix in READ_SUFFIXES and f.is_file() and (st := f.stat())
    )
    blob = [FORMAT, revision, str(path.resolve()), version("transformers"), version("tokenizers"), files]
    return hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:24]
