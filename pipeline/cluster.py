"""Joining the Ray cluster and reading what it offers: the helpers every entry point shares.

`pipeline run`, `pipeline serve` and the benchmarks connect the same way (an address, else
RAY_ADDRESS, else a fresh local instance), so a bench and the product never measure two
different set-ups.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# The head's `--system-config` for a night's cluster (cluster.yaml; the bench and test clusters
# use it too; Ray hands it to every node that joins).
# - idle_worker_killing_time_threshold_ms: Ray kills a worker process that has been idle 1 s
#   once a node has more workers than CPUs, which fractional-CPU stages always do; a
#   backpressured encode or write then starts a fresh process that imports the tokenizer stack
#   again (~5 CPU-s). On 1M documents that was 38 fresh CPU workers and 0.3 ms of CPU per
#   document; kept for 20 s, they are reused (20 workers started over a 1M night, as with 60 s),
#   and the workers only start-up needed (the id check, the first reads) are gone within
#   half a minute instead of a whole one.
# - object_manager_default_chunk_size: every block crosses nodes twice (to the inference actor
#   and back to decode), and each raylet holds buffers per chunk in flight. With Ray's 5 MiB
#   chunks the bench's three raylets peaked at 205-210 MiB of anonymous memory on 300k
#   documents; with 1 MiB, 157 (256 KiB: 152, for four times the messages).
# - object_manager_max_bytes_in_flight: what a raylet holds of a transfer between nodes at
#   once, sender and receiver alike. With Ray's default, a block moving between the inference
#   node and the CPU node lifted both raylets by 11-16 MiB for a fraction of a second, a few
#   times a minute (sampled 5x a second, 300k documents, two runs): the raylets' peak was
#   whichever burst the sampler caught. At 4 MiB the lift stays under 6 MiB (5.7-5.8 in three
#   runs) at the same speed (2,908-3,022 documents/s against 2,919-2,998); 4 MiB per round trip
#   is still far above a datacenter link's rate.
HEAD_SYSTEM_CONFIG = {
    "idle_worker_killing_time_threshold_ms": 20_000,
    "object_manager_default_chunk_size": 2**20,
    "object_manager_max_bytes_in_flight": 4 * 2**20,
}

# The environment of `ray start` on every node (cluster.yaml's start commands, the bench's
# clusters). Ray runs its raylets and GCS on jemalloc, which by default keeps freed pages for
# 10 s before giving them back: a raylet moving blocks between nodes then holds the last
# seconds' transfer buffers, and its memory follows the traffic. Returned at once, the bench's
# three raylets stay at 40 MiB of anonymous memory all night on 300k documents (peak 50),
# against a median of 112-132 and peaks of 154-178, for 0.004 ms more raylet CPU per document.
# RAY_JEMALLOC_CONF reaches only the processes RAY_JEMALLOC_PROFILE names (Ray's own switch).
# How often a Ray process retries its raylet's sockets while starting: Ray's default is every
# 1,000 ms, 10 times. A starting raylet's object manager connects to the object store that the
# raylet has just started in another thread; when it comes first, it sleeps a whole interval.
# That happened in 7 of 25 local starts here: `ray.init` took 3.3 s instead of 2.3, one run in
# three. Every 50 ms, 200 times, keeps Ray's 10 s in all. Every Ray start gets it: a local
# instance (ensure_ray) and each node of a cluster (NODE_ENV).
CONNECT_ENV = {
    "RAY_raylet_client_connect_timeout_milliseconds": "50",
    "RAY_raylet_client_num_connect_attempts": "200",
}
NODE_ENV = {
    "RAY_JEMALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0",
    "RAY_JEMALLOC_PROFILE": "raylet,gcs_server",
    **CONNECT_ENV,
}


def ensure_ray(address: str | None, local_env: Mapping[str, str] | None = None) -> None:
    """Connect to the given cluster (or RAY_ADDRESS); otherwise start a local instance, its
    processes started with CONNECT_ENV and `local_env` added to this one's environment (a
    variable already set here keeps its value)."""
    import os

    import ray

    if ray.is_initialized():
        return
    # Ray's own INFO lines ("Started a local Ray instance") stay in its log files unless the
    # command runs with -v; its warnings still show.
    level = logging.INFO if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.WARNING
    on_sigterm = signal.getsignal(signal.SIGTERM)
    target = address or os.environ.get("RAY_ADDRESS")
    if target and target != "local":
        ray.init(address=target, log_to_driver=True, logging_level=level)
    else:
        # "local": a new instance, never one that a `ray start` left running here (or a dead
        # one's address file, which ray.init() would wait on for minutes)
        stop_orphaned_agents()
        for key, value in {**CONNECT_ENV, **(local_env or {})}.items():
            os.environ.setdefault(key, value)  # Ray's processes inherit the driver's environment
        ray.init(address="local", include_dashboard=False, log_to_driver=True, logging_level=level)
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        # Ray's core worker installs a crash handler for SIGTERM that dumps a stack trace:
        # a caller that chose how to stop (the CLI stops as on Ctrl-C) keeps its choice.
        signal.signal(signal.SIGTERM, on_sigterm)


RAY_AGENTS = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")


def processes(proc: Path = Path("/proc")) -> Iterator[tuple[int, list[bytes], bytes]]:
    """Each process readable here: its pid, its arguments, and its parent's command line
    (empty when the parent is gone or is init)."""
    for entry in proc.glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = (proc / str(ppid) / "cmdline").read_bytes() if ppid > 1 else b""
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        yield int(entry.name), args, parent


def orphaned_agents(proc: Path = Path("/proc")) -> list[int]:
    """Ray's dashboard and runtime-env agents whose raylet is gone. They outlive a local
    instance whose driver was killed outright (SIGKILL, the OOM killer), and the dashboard agent
    keeps its fixed port (52365): the next Ray instance on the machine then has no job agent
    (`No available agent to submit job`)."""
    return [
        pid
        for pid, args, parent in processes(proc)
        if args[0].startswith(RAY_AGENTS) and b"raylet" not in parent.split(b"\0")[0]
    ]


def stop_orphaned_agents() -> None:
    """Before a local instance starts: stop the agents a killed one left (see orphaned_agents)."""
    import os

    for pid in orphaned_agents():
        log.warning("stopping Ray agent pid %d, left behind by a Ray instance that was killed", pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # on SIGTERM they wait on their dead GCS


def cpu_tasks(configured: int | None) -> int:
    """The cap on concurrent encode (and, apart, decode) tasks: configured, else half the
    cluster's CPUs now. Measured on 2 cores: a 300-document job took 27 s with a cap of 2 and
    17 s with 1, as fewer fresh workers import the tokenizer stack at once."""
    import ray

    return configured or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
