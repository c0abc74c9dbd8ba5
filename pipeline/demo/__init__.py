"""Offline models: the demo models (MiniLM-L6 fine-tuned on a corpus this project generates
itself) and random-weight models for tests and benchmarks (`random_models`)."""

from pipeline.demo.train import build

__all__ = ["build"]
