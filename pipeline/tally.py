"""A tiny Ray actor that sums counters reported by the stages of one run (for the run report)."""

from __future__ import annotations

from collections import defaultdict

import ray


@ray.remote(num_cpus=0)
class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, float] = defaultdict(float)

    def add(self, counts: dict[str, float]) -> None:
        for key, value in counts.items():
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
