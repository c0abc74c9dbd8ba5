"""Where a night's start-up goes, from the command to the first model batch.

On a small night start-up is most of the wall time, and the phases overlap (the inference
actor loads its models while the ids are checked), so the report keeps when each phase
ended, measured from the process's own start: the imports before `run` are counted too.
"""

from __future__ import annotations

import os
import time
from functools import cache


@cache
def process_started_at() -> float:
    """When this process started (wall clock), from /proc; now, where there is no /proc."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        # seconds since boot on the kernel's own clock (/proc/uptime is per container under lxcfs)
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age if age >= 0 else time.time()
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


def command_started_at() -> float:
    """When the command started: the process's start, unless the package was imported well
    after it (a shell that ran the command through exec, as `bash -c "a && pipeline run"` does
    for its last command: the process is the shell's). Then when the package was imported."""
    from pipeline import IMPORTED_AT

    started = process_started_at()
    return started if IMPORTED_AT - started < 2 else IMPORTED_AT


class Phases:
    """Seconds from the command's start to the end of each named phase, in order."""

    def __init__(self) -> None:
        self.t0 = command_started_at()
        self.ends: dict[str, float] = {}

    def mark(self, name: str, at: float | None = None) -> None:
        self.ends[name] = round((at if at is not None else time.time()) - self.t0, 2)

    def report(self) -> dict[str, float]:
        return dict(sorted(self.ends.items(), key=lambda kv: kv[1]))
