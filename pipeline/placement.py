"""Fail the night clearly when no node of the cluster can host an inference actor any more.

Ray restarts a lost inference actor on another node that has the resources it asks for
(GPUs, CPUs, the custom resources that pin it to a node type). When no alive node has them,
the restart waits forever and so would the job. This watch checks the alive nodes every few
seconds; when none could host an actor for `grace_s` in a row (room for an autoscaler to
bring one up), it stops the driver's job, and the job fails with one line that says so. The
staged output and its checkpoint stay: a rerun, once such a node is back, resumes.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time

log = logging.getLogger(__name__)
REPEAT_S = 10.0  # seconds between stops until the driver has unwound


class NoActorNodeError(RuntimeError):
    """No alive node can host an inference actor (resources named in the message)."""


class StopRun(BaseException):  # noqa: N818 - a stop, like KeyboardInterrupt, not an error
    """Raised inside the thread that runs the job when the watch stops it."""


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in that thread at its next Python instruction (None: cancel a pending one).

    Not a signal: no SIGINT handler is needed (a process started with SIGINT ignored, as a
    child of some tools is, has none) and the job may run in any thread.
    """
    _set_async_exc(thread_id, ctypes.py_object(exc) if exc else ctypes.py_object())


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
    """A daemon thread; use as a context manager around the job, then call `check()`."""

    def __init__(self, need: dict[str, float], grace_s: float, period_s: float = 2.0) -> None:
        self.need = need
        self.grace_s = grace_s
        self.period_s = period_s
        self.tripped: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._job_thread = 0  # the thread that enters the watch runs the job
        self._thread = threading.Thread(target=self._loop, name="placement-watch", daemon=True)

    def __enter__(self) -> PlacementWatch:
        self._job_thread = threading.get_ident()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s * 2)

    def _loop(self) -> None:
        import ray

        since: float | None = None
        while not self._stop.wait(self.period_s):
            try:
                fits = can_host(ray.nodes(), self.need)
            except Exception:  # noqa: BLE001 - a GCS hiccup is not a verdict
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
                log.error(self.tripped)
                break
        # Raised in the job's thread: Ray Data stops its execution and the driver unwinds.
        # Repeated until it does: one stop that lands inside Ray's own error handling can be
        # lost there, and the night would wait forever on the restarting actor.
        while self.tripped:
            with self._lock:
                if self._stop.is_set():
                    return
                _raise_in(self._job_thread, StopRun)
            self._stop.wait(REPEAT_S)

    def check(self) -> None:
        """Raise the one-line error if the watch stopped the run (and stop stopping it)."""
        if self.tripped:
            with self._lock:
                self._stop.set()
                _raise_in(self._job_thread, None)  # a stop still pending would hit our handler
            raise NoActorNodeError(self.tripped)
