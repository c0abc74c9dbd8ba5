"""Once a second: memory and CPU of each kind of process of a Ray job, object store, documents written.

Processes are found from roots (the driver, and every process whose command line names the
cluster's temp dir: GCS, raylets, monitors) and their descendants, then sorted into kinds by
their command line (Ray workers carry `ray::<task or actor>` as their title). Memory is PSS
(shared pages split between the processes that map them) less its shared-memory part, read
from /proc/PID/smaps_rollup: the object store is one shared mapping that every worker
touches, so it is sampled on its own (bytes in use, bytes spilled) from the raylets, every
STORE_EVERY_S only: that query has every raylet ask each of its workers for stats, and asked
every second it raised the raylets' own memory (median 56.5 -> 60.5 MiB on 300k documents, plus
1-second spikes of up to 12 MiB) -- the bench measured itself.
"""

from __future__ import annotations

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
STORE_EVERY_S = 5.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS without the shared-memory part, anonymous PSS). The object store, mapped into every
    worker, is sampled apart. Anonymous memory (heaps, arenas, Python objects) is what a leak or
    a buffer that grows with the night shows in; PSS also holds a share of the libraries' pages
    (torch's alone are hundreds of MB), which rises for the processes that remain when others
    that mapped the same library exit, with no byte more in use."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Shmem", "Pss_Anon"):
                fields[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0), fields.get("Pss_Anon", 0)


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None  # gone: its last reading stands


def host_cpu_s() -> dict[str, float]:
    """This machine's CPU seconds so far, all cores: busy, idle, and stolen by the hypervisor (a
    neighbour's load on a shared VM: a run that slows with no process using more CPU shows here)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return {"busy": busy / CLK_TCK, "idle": (idle + iowait) / CLK_TCK, "steal": steal / CLK_TCK}


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
        self._stale = self._present()  # an earlier run's files, until --overwrite clears them
        self._state = None
        self._store_at = 0.0
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (kind, first seen, last seen) CPU s
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
        if not self.address or time.time() - self._store_at < STORE_EVERY_S:
            return {}
        self._store_at = time.time()
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

    def _present(self) -> set[str]:
        found: set[str] = set()
        if self.output is None:
            return found
        for folder in (self.output / "_staging" / "data", self.output):
            try:
                found.update(e.path for e in os.scandir(folder) if e.name.endswith(".parquet"))
            except OSError:
                continue
        return found

    def _written(self) -> int:
        """Rows in the output files that appeared since sampling began (not an earlier run's, which
        --overwrite deletes as the run starts, nor those a resumed run keeps)."""
        import pyarrow.parquet as pq

        total = 0
        for path in self._present() - self._stale:
            if path not in self._rows:
                try:
                    self._rows[path] = pq.ParquetFile(path).metadata.num_rows
                except Exception:  # noqa: BLE001 - still being written
                    continue
            total += self._rows[path]
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            mem: dict[str, int] = dict.fromkeys(KINDS, 0)
            anon: dict[str, int] = dict.fromkeys(KINDS, 0)
            largest: dict[str, int] = dict.fromkeys(KINDS, 0)
            count: dict[str, int] = dict.fromkeys(KINDS, 0)
            for pid, kind in self._processes().items():
                pss, pss_anon = _memory_kib(pid)
                mem[kind] += pss
                anon[kind] += pss_anon
                largest[kind] = max(largest[kind], pss)
                count[kind] += 1
                used = _cpu_s(pid)
                if used is not None:
                    first = self._cpu.get(pid, (kind, used, used))[1]
                    self._cpu[pid] = (kind, first, used)
            sample = {
                "t": round(t - self.started, 2),
                "cpu_s": self.cpu_used(),
                "host_cpu_s": host_cpu_s(),
                "pss_kib": mem,
                "anon_kib": anon,
                "largest_kib": largest,
                "processes": count,
                "written": self._written(),
                **self._store(),
            }
            self.series.append(sample)
            self._stop.wait(max(0.0, 1.0 - (time.time() - t)))

    def peaks_mib(self, field: str = "pss_kib") -> dict[str, float]:
        """Peak per kind of `field` (pss_kib, or anon_kib), object store and spilled bytes."""
        peaks = {k: max((s[field][k] for s in self.series), default=0) / 1024 for k in KINDS}
        for key in ("object_store", "spilled"):
            peaks[key] = max((s.get(key, 0) for s in self.series), default=0) / 1024
        return {k: round(v, 1) for k, v in peaks.items()}

    def peak_written(self, field: str = "pss_kib") -> dict[str, int]:
        """Documents written when each kind peaked: a peak reached early in a long run is a
        start-up transient, one reached at its end is growth."""
        return {
            k: max(self.series, key=lambda s: s[field][k])["written"] if self.series else 0 for k in KINDS
        }

    def largest_mib(self) -> dict[str, float]:
        """Peak PSS of the largest single process of each kind."""
        return {k: round(max((s["largest_kib"][k] for s in self.series), default=0) / 1024, 1) for k in KINDS}

    def cpu_used(self) -> dict[str, float]:
        """CPU seconds used per kind since sampling began (every process seen, gone ones too)."""
        used = dict.fromkeys(KINDS, 0.0)
        for kind, first, last in self._cpu.values():
            used[kind] += last - first
        return {k: round(v, 2) for k, v in used.items()}

    def cpu_share(self) -> dict[str, float]:
        """Share of the CPU time used while sampled, per kind."""
        used = self.cpu_used()
        total = sum(used.values()) or 1.0
        return {k: round(v / total, 3) for k, v in used.items()}
