"""Faults planted in a night's Ray workers through Ray's own `worker_process_setup_hook`: each
function runs once in every worker process of the job before it does any work. They stand for
what a broken model or a bug does to every row (or to a few), where no real model file can."""

from __future__ import annotations

POISON = "POISON"


def forward_raises() -> None:
    """Every forward pass fails, as with weights that do not fit their inputs."""
    from pipeline.infer import ModelRunner

    def broken(self, batch):
        raise IndexError("index out of range in self")

    ModelRunner._forward = broken  # type: ignore[method-assign]


def decode_raises() -> None:
    """Decoding fails on every row, as a bug in a label map's handling would."""
    from pipeline.decode import Decoder

    def broken(self, texts, out):
        raise KeyError("label id 7 is not in the label map")

    Decoder._decode = broken  # type: ignore[method-assign]


def poisoned_rows() -> None:
    """Decoding fails on the rows whose text holds POISON, and only on them."""
    from pipeline.decode import Decoder

    real = Decoder._decode

    def picky(self, texts, out):
        if any(isinstance(t, str) and POISON in t for t in texts):
            raise ValueError("a poisoned row")
        return real(self, texts, out)

    Decoder._decode = picky  # type: ignore[method-assign]
