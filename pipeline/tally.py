"""A tiny Ray actor that sums counters reported by the stages of one run (for the run report).

Besides sums it keeps the earliest value of "first_*" keys (e.g. when the model saw its first
batch), so the report can say how long start-up took.
"""

from __future__ import annotations

from collections import defaultdict

import ray


@ray.remote(num_cpus=0)
class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, float] = defaultdict(float)

    def add(self, counts: dict[str, float]) -> None:
        for key, value in counts.items():
            if key.startswith("first_"):
                self.counts[key] = min(self.counts.get(key, value), value)
            else:
                self.counts[key] += value

    def get(self) -> dict[str, float]:
        return dict(self.counts)


_handles: dict[str, object] = {}


def report(name: str | None, counts: dict[str, float]) -> None:
    """Fire-and-forget: add counts to the run's tally, if the run has one."""
    if not name:
        return
    handle = _handles.get(name)
    if handle is None:
        try:
            handle = _handles[name] = ray.get_actor(name)
        except ValueError:
            return
    handle.add.remote(counts)  # type: ignore[attr-defined]
