"""Offline demo models: MiniLM-L6 fine-tuned on a corpus this project generates itself."""

from pipeline.demo.train import build

__all__ = ["build"]
