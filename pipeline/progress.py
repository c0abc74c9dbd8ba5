"""The run's own progress line, in place of Ray Data's console progress.

Ray Data logs a block of per-operator lines every 10 s when stdout is not a terminal (a
scheduler's log, `ray job submit`): a short night printed 150 of them and buried the job's
own output. While the night runs, its console lines go to Ray Data's log file only
(`ray-data.log` in the Ray session directory, warnings still shown) and this module prints
one line per interval instead: documents labeled and through the model, rate and time left.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def line(done: int, total: int, rate: float | None, inferred: int = 0) -> str:
    """`labeled 12,345 of 100,000 documents (12%), 20,480 through the model, 930 docs/s, about
    1m34s left`: labeled = decoded and on their way to a file; through the model = the models
    have run on them (the rest of those wait for decode and write)."""
    pct = f" ({done / total:.0%})" if total else ""
    text = f"labeled {done:,} of {total:,} documents{pct}"
    if inferred > done:
        text += f", {inferred:,} through the model"
    if not done and not inferred:
        text += ", starting up (workers, model load)"
    if rate:
        text += f", {rate:,.0f} docs/s"
        if total > done:
            text += f", about {_duration((total - done) / rate)} left"
    return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLine:
    """A daemon thread that prints `line(...)` every `interval_s` from the `counts()` of documents
    (labeled, through the model)."""

    def __init__(
        self,
        counts: Callable[[], tuple[int, int]],
        total: int,
        echo: Callable[[str], None],
        interval_s: float,
    ) -> None:
        self.counts, self.total, self.echo, self.interval_s = counts, total, echo, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress-line", daemon=True)

    def __enter__(self) -> ProgressLine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        first: tuple[float, int] | None = None  # the rate counts from the first labeled batch seen
        while not self._stop.wait(self.interval_s):
            try:
                done, inferred = self.counts()
            except Exception:  # noqa: BLE001 - a missed tick is not worth failing a night
                continue
            now = time.time()
            if first is None and done:
                first = (now, done)
            rate = (done - first[1]) / (now - first[0]) if first and now > first[0] else None
            self.echo(line(done, self.total, rate, inferred))


@contextmanager
def quiet_ray_data_console() -> Iterator[None]:
    """Ray Data's INFO lines and progress go to its log file only; its warnings still show."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    previous = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # Ray would warn that we turned its bars off
    handlers = [h for h in logging.getLogger("ray.data").handlers if h.get_name() == "console"]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars = previous
        for h, level in zip(handlers, levels, strict=True):
            h.setLevel(level)


PROGRESS_ENV = "PIPELINE_PROGRESS_S"


def interval_s() -> float:
    """PIPELINE_PROGRESS_S if set (a long night's log wants fewer lines, a benchmark more);
    else 10 s into a log (as Ray's own non-terminal progress), 5 s on a terminal."""
    try:
        configured = float(os.environ.get(PROGRESS_ENV, ""))
    except ValueError:
        configured = 0.0
    if configured > 0:
        return configured
    return 5.0 if sys.stdout.isatty() else 10.0
