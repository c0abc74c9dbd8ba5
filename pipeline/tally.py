"""A tiny Ray actor that sums counters reported by the stages of one run (for the run report).

Besides sums it keeps the earliest value of "first_*" keys (e.g. when the model saw its first
batch), so the report can say how long start-up took, and short lists of notes (e.g. skipped
files), capped so that nothing in it grows with the corpus.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import ray

MAX_NOTES = 100
DTYPE_KEY = "actor_dtype:"  # counters "actor_dtype:<model>:<dtype>": inference actors that ran it
MODEL_KEY = "model:"  # counters "model:<model>:<windows|tokens|forward_s>": each model's own work
UNTUNED_KEY = "untuned:"  # counters "untuned:<model>": actors that ran it untuned (no verdict)


@ray.remote(num_cpus=0)
class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, float] = defaultdict(float)
        self.notes: dict[str, list[Any]] = defaultdict(list)

    def add(self, counts: dict[str, float]) -> None:
        for key, value in counts.items():
            if key.startswith("first_"):
                self.counts[key] = min(self.counts.get(key, value), value)
            else:
                self.counts[key] += value

    def note(self, key: str, item: Any) -> None:
        if len(self.notes[key]) < MAX_NOTES:
            self.notes[key].append(item)

    def get(self) -> dict[str, float]:
        return dict(self.counts)

    def get_notes(self) -> dict[str, list[Any]]:
        return dict(self.notes)


def start(name: str) -> Any:
    """The run's tally, on the driver's node: it shares the driver's fate and no other node's.
    Placed anywhere, a lost worker node took the run's counters, and the run with them. Ray
    Data pins its own stats actor to the driver's node for the same reason."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Tally.options(name=name, scheduling_strategy=here).remote()  # type: ignore[attr-defined]  # @ray.remote makes the class an ActorClass at runtime


_handles: dict[str, object] = {}


def _handle(name: str | None):
    if not name:
        return None
    handle = _handles.get(name)
    if handle is None:
        try:
            handle = _handles[name] = ray.get_actor(name)
        except ValueError:
            return None
    return handle


def report(name: str | None, counts: dict[str, float]) -> None:
    """Fire-and-forget: add counts to the run's tally, if the run has one."""
    handle = _handle(name)
    if handle is not None:
        handle.add.remote(counts)


def note(name: str | None, key: str, item: Any) -> None:
    """Fire-and-forget: keep one note (at most MAX_NOTES per key) in the run's tally."""
    handle = _handle(name)
    if handle is not None:
        handle.note.remote(key, item)
