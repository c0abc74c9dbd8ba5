"""Fail the night clearly when no node of the cluster can host an inference actor any more.

Ray restarts a lost inference actor on another node that has the resources it asks for
(GPUs, CPUs, the custom resources that pin it to a node type). When no alive node has them,
the restart waits forever and so would the job. This watch checks the alive nodes every few
seconds; when none could host an actor for `grace_s` in a row (room for an autoscaler to
bring one up), it trips, and the night's own Ray Data execution stops at its next scheduling
step (`StopWhenTripped`, one of Ray Data's execution callbacks): Ray Data shuts its operators
down as for any failure, and the job fails with one line that says so. The staged output and
its checkpoint stay: a rerun, once such a node is back, resumes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data.exceptions import ExecutionTimeoutError

log = logging.getLogger(__name__)
_watching: list[PlacementWatch] = []  # the watches of this process's running nights


class NoActorNodeError(ExecutionTimeoutError):
    """No alive node can host an inference actor (resources named in the message). Ray Data's
    kind for "the cluster can no longer schedule this work": it then keeps the stack trace in
    its log file, off the operator's console, where it would ask them to report a Ray bug."""


def actor_needs(cpus: float, gpus: float, resources: dict[str, float]) -> dict[str, float]:
    need = {"CPU": cpus, **resources}
    if gpus:
        need["GPU"] = gpus
    return {k: v for k, v in need.items() if v}


def can_host(nodes: list[dict], need: dict[str, float]) -> bool:
    """True when some alive node has (in total, busy or not) what one actor needs."""
    return any(
        node.get("Alive") and all(node.get("Resources", {}).get(k, 0) >= v for k, v in need.items())
        for node in nodes
    )


class PlacementWatch:
    """A daemon thread; use as a context manager around the job, whose DataContext lists
    `StopWhenTripped` among its execution callbacks."""

    def __init__(self, need: dict[str, float], grace_s: float, period_s: float = 2.0) -> None:
        self.need = need
        self.grace_s = grace_s
        self.period_s = period_s
        self.tripped: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="placement-watch", daemon=True)

    def __enter__(self) -> PlacementWatch:
        _watching.append(self)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s * 2)
        _watching.remove(self)

    def _loop(self) -> None:
        import ray

        since: float | None = None
        while not self._stop.wait(self.period_s):
            try:
                fits = can_host(ray.nodes(), self.need)
            except Exception:  # noqa: BLE001 - a GCS hiccup is not a verdict
                log.debug("could not read the cluster's nodes; trying again", exc_info=True)
                continue
            if fits:
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= self.grace_s:
                wanted = ", ".join(f"{k} {v:g}" for k, v in self.need.items())
                self.tripped = (
                    f"no alive node of the cluster can host an inference actor ({wanted}) for "
                    f"{self.grace_s:g} s: the node(s) that could are gone. Nothing was published; the "
                    "output written so far is kept: run the same command again once such a node is back "
                    "and the run resumes (ray.actor_node_timeout_s sets how long to wait)"
                )
                log.debug("tripped: %s", self.tripped)  # the night's error line says it once
                return


class StopWhenTripped(ExecutionCallback):
    """Ends a Ray Data execution in the driver at its next scheduling step once a watch of this
    process has tripped. Ray Data instantiates it from the DataContext, which also travels to
    the workers: there no watch runs and it does nothing."""

    def on_execution_step(self, executor: Any) -> None:
        for watch in _watching:
            if watch.tripped:
                raise NoActorNodeError(watch.tripped)
