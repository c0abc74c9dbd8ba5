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


class Phases:
    """Seconds from the process's start to the end of each named phase, in order."""

    def __init__(self) -> None:
        self.t0 = process_started_at()
        self.ends: dict[str, float] = {}

    def mark(self, name: str, at: float | None = None) -> None:
        self.ends[name] = round((at if at is not None else time.time()) - self.t0, 2)

    def report(self) -> dict[str, float]:
        return dict(sorted(self.ends.items(), key=lambda kv: kv[1]))
