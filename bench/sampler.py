"""Once a second: memory and CPU of each kind of process of a Ray job, object store, documents written.

Processes are found from roots (the driver, and every process whose command line names the
cluster's temp dir: GCS, raylets, monitors) and their descendants, then sorted into kinds by
their command line (Ray workers carry `ray::<task or actor>` as their title). Memory is PSS
(shared pages split between the processes that map them), read from /proc/PID/smaps_rollup.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.cluster import children

KINDS = ("driver", "gcs", "raylets", "ray_system", "data_workers", "infer_actors")
SYSTEM_ACTORS = (
    "DashboardAgent",
    "RuntimeEnvAgent",
    "StatsActor",
    "AutoscalingCoordinator",
    "ActorLocationTracker",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def kind_of(cmd: str) -> str | None:
    if "gcs_server" in cmd:
        return "gcs"
    if "/raylet/raylet" in cmd:
        return "raylets"
    if cmd.startswith("ray::"):
        title = cmd.split()[0]
        if "InferActor" in title or "ServeInfer" in title:
            return "infer_actors"
        if any(a in title for a in SYSTEM_ACTORS):
            return "ray_system"
        return "data_workers"  # read/encode, decode/write, idle workers, the run's tally
    if any(s in cmd for s in ("log_monitor", "dashboard", "monitor.py", "runtime_env", "ray_client_server")):
        return "ray_system"
    return None


class Sampler:
    """Background thread; `series` holds one dict per second, `peaks()` the maximum per kind."""

    def __init__(
        self, driver_pid: int, temp_dir: str | None, address: str | None, output: Path | None
    ) -> None:
        self.driver_pid = driver_pid
        self.temp_dir = temp_dir
        self.address = address
        self.output = output
        self.series: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._rows: dict[str, int] = {}
        self._state = None
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.started = time.time()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _processes(self) -> dict[int, str]:
        kids = children()
        roots = [self.driver_pid]
        if self.temp_dir:
            roots += [p for ps in kids.values() for p in ps if self.temp_dir in _cmdline(p)]
        found: dict[int, str] = {}
        stack = list(dict.fromkeys(roots))
        while stack:
            pid = stack.pop()
            if pid in found:
                continue
            cmd = _cmdline(pid)
            kind = "driver" if pid == self.driver_pid else kind_of(cmd)
            if kind:
                found[pid] = kind
            stack.extend(kids.get(pid, []))
        return found

    def _store(self) -> dict[str, int]:
        if not self.address:
            return {}
        try:
            from ray._private.internal_api import get_memory_info_reply, get_state_from_address

            if self._state is None:
                self._state = get_state_from_address(self.address)
            stats = get_memory_info_reply(self._state, timeout_seconds=5).store_stats
            return {
                "object_store": stats.object_store_bytes_used // 1024,
                "spilled": stats.spilled_bytes_total // 1024,
            }
        except Exception:  # noqa: BLE001 - the cluster may be going away
            return {}

    def _written(self) -> int:
        if self.output is None:
            return 0
        import pyarrow.parquet as pq

        for folder in (self.output / "_staging" / "data", self.output):
            try:
                names = [e for e in os.scandir(folder) if e.name.endswith(".parquet")]
            except OSError:
                continue
            for entry in names:
                if entry.name not in self._rows:
                    try:
                        self._rows[entry.name] = pq.ParquetFile(entry.path).metadata.num_rows
                    except Exception:  # noqa: BLE001 - still being written
                        continue
        return sum(self._rows.values())

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            mem: dict[str, int] = dict.fromkeys(KINDS, 0)
            cpu: dict[str, float] = dict.fromkeys(KINDS, 0.0)
            count: dict[str, int] = dict.fromkeys(KINDS, 0)
            for pid, kind in self._processes().items():
                mem[kind] += _pss_kib(pid)
                cpu[kind] += _cpu_s(pid)
                count[kind] += 1
            sample = {
                "t": round(t - self.started, 2),
                "pss_kib": mem,
                "cpu_s": cpu,
                "processes": count,
                "written": self._written(),
                **self._store(),
            }
            self.series.append(sample)
            self._stop.wait(max(0.0, 1.0 - (time.time() - t)))

    def peaks_mib(self) -> dict[str, float]:
        peaks = {k: max((s["pss_kib"][k] for s in self.series), default=0) / 1024 for k in KINDS}
        for key in ("object_store", "spilled"):
            peaks[key] = max((s.get(key, 0) for s in self.series), default=0) / 1024
        return {k: round(v, 1) for k, v in peaks.items()}

    def cpu_share(self) -> dict[str, float]:
        """Share of the CPU time spent by each kind over the run (per process, last minus first)."""
        if len(self.series) < 2:
            return {}
        first, last = self.series[0]["cpu_s"], self.series[-1]["cpu_s"]
        used = {k: max(0.0, last[k] - first[k]) for k in KINDS}
        total = sum(used.values()) or 1.0
        return {k: round(v / total, 3) for k, v in used.items()}

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.series))
