"""What a model kind is: the one interface that encode, infer, decode, the stages, Serve and
the int8 gate talk to, so that none of them names a kind.

A kind owns its config spec (and through it the transformers Auto class that loads it),
what its forward returns (reduced where the model runs), how a long document is cut into
windows and the window results reduced to one per document, how outputs cross Ray Data as
Arrow columns, how they are decoded (Hugging Face pipelines' or sentence-transformers'
semantics), which output columns, online fields and route it adds, how `--show` prints it,
and how close two runs of it are (its int8 gate). `pipeline.kinds` registers the kinds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from pipeline.config import ModelSpec
    from pipeline.encode import Framing, Tokens


def softmax(x: np.ndarray) -> np.ndarray:
    """fp32 softmax over the last axis, row max subtracted (as HF does)."""
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float32, copy=False)))


class KindBatch(ABC):
    """One model's outputs for a batch of documents, as the decoder reads them."""

    @abstractmethod
    def doc(self, i: int) -> KindBatch:
        """Document i alone (to isolate a decode failure to its own row)."""


class KindDecoded(ABC):
    """One model's decoded results for a batch, by role (e.g. label, score, entities)."""

    @abstractmethod
    def values(self, role: str) -> list[Any]:
        """Python values of one role, one per document (None where the model gave nothing)."""

    def array(self, role: str, type_: pa.DataType) -> pa.Array:
        """The role as an Arrow column (kinds override this where building dicts is slow)."""
        return pa.array(self.values(role), type_)


class Listed(KindDecoded):
    """Decoded results already as Python lists (joined from per-document parts)."""

    def __init__(self, lists: dict[str, list[Any]]) -> None:
        self.lists = lists

    def values(self, role: str) -> list[Any]:
        return self.lists[role]


class KindDecoder(ABC):
    @abstractmethod
    def decode(self, texts: Sequence[object], batch: KindBatch, ok: np.ndarray) -> KindDecoded:
        """Decode a batch; documents where `ok` is False get None in every role."""


class HfParameterError(ValueError):
    """A Hugging Face Inference `parameters` entry that is unknown (422) or that this model
    cannot honour (400); the message names it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class HfContext:
    """What a kind may need to shape one input's Hugging Face answer: the text, and the token
    strings of a span of it, as `transformers`' pipelines spell them."""

    text: str
    spec: ModelSpec  # the model's spec with the request's parameters applied
    tokens: Callable[[int, int], list[str]]  # the tokens inside [start, end) of the text
    decode: Callable[[list[str]], str]  # convert_tokens_to_string


class Kind(ABC):
    """A model kind; one instance per kind, registered in `pipeline.kinds.KINDS`."""

    name: str  # the `kind:` value in a config
    spec: type[ModelSpec]  # its config entry (a pipeline.config.ModelSpec with `kind` fixed)
    default_name: str  # the model name that needs no `kind:` and keeps the short column names
    needs_offsets: bool  # the decoder reads character offsets of the model's token stream
    gate: tuple[str, float]  # int8 quality gate: agreement metric (pipeline.agreement) and floor
    per_token: bool  # the forward gives a row per token ([B, L, C]), else one per sequence ([B, D])
    endpoint: str  # the online route with this kind's models only: POST /v1/<endpoint>
    # its default model's columns are in every output, configured or not (the first two
    # kinds: outputs keep the columns their readers have always had, null when absent)
    always_in_output: bool = False

    def describe(self, lm: Any) -> dict[str, Any]:
        """What the lineage and /v1/models record of a model beyond source and revision."""
        return {}

    # -- the Hugging Face Inference API (POST /models/<name>) --------------------------------
    hf_task: str | None = None  # the task whose shape it answers in; None: no such route
    hf_nests_one: bool = True  # a single string input is answered as a list of one answer

    def hf_spec(self, lm: Any, parameters: dict[str, Any]) -> ModelSpec:
        """The model's spec with a request's task `parameters` applied (HfParameterError)."""
        if parameters:
            raise HfParameterError(422, f"unknown parameter(s) {sorted(parameters)}")
        return lm.spec

    def hf_answer(self, row: dict[str, Any], columns: dict[str, str], context: HfContext) -> Any:
        """One input's answer in the task's shape, from its result row."""
        raise NotImplementedError

    def output(self, lm: Any) -> Any:
        """What a forward returns, as `(model output, attention mask) -> tensor`, run where
        the model runs: the spec's output (`logits` for the heads) unless the kind reduces it."""
        name = lm.spec.output_name
        return lambda out, mask: getattr(out, name)

    @abstractmethod
    def first_window_only(self, spec: ModelSpec) -> bool:
        """Window policy: True when only a document's first window is run (truncation)."""

    @abstractmethod
    def reduce(self, logits: list[np.ndarray], spans: np.ndarray, framing: Framing) -> Any:
        """A document's window logits -> its one result (travels to decode)."""

    @abstractmethod
    def roles(self, spec: ModelSpec | None) -> list[tuple[str, pa.DataType]]:
        """Output roles and their Arrow types (spec None: the model is not configured)."""

    @abstractmethod
    def default_columns(self) -> dict[str, str]:
        """Column names of the roles for `default_name` (other names: `{name}_{role}`)."""

    @abstractmethod
    def decoder(self, lm: Any) -> KindDecoder: ...

    # -- transport between stages -------------------------------------------------------
    @abstractmethod
    def to_columns(self, key: str, results: list[Any | None]) -> dict[str, pa.Array]:
        """Per-document results -> internal Arrow columns named from `key`."""

    @abstractmethod
    def from_columns(
        self, key: str, table: pa.Table, stream: tuple[str, str | None], n_labels: int
    ) -> KindBatch:
        """Internal columns (and the token stream's ids/offsets columns) -> a batch."""

    @abstractmethod
    def from_results(
        self, results: list[Any | None], streams: list[Tokens | None], n_labels: int
    ) -> KindBatch:
        """Per-document results (the in-process and online path) -> a batch."""

    # -- quality and display ---------------------------------------------------------------
    @abstractmethod
    def agreement(
        self, rows: list[dict[str, Any]], ref: list[dict[str, Any]], columns: dict[str, str]
    ) -> dict[str, float]:
        """How close this model's results in `rows` are to `ref` (same texts): the measures by
        name, `gate[0]` among them (the int8 gate, the dtype tests and the benchmarks read them)."""

    @abstractmethod
    def online_fields(self) -> dict[str, Any]:
        """Its fields of an online result under the default names, as pydantic field
        definitions `{name: (type, default)}` (the API schema /docs shows)."""

    @abstractmethod
    def show(self, row: dict[str, Any], columns: dict[str, str]) -> str:
        """This model's answer in a row, short, for a person (`pipeline run --show`)."""
