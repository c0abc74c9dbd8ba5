"""A Ray cluster of several nodes on this machine, started as an operator starts one.

`ray start --head` plus `ray start --address=...` per worker node, each node with its own
CPUs and custom resources, token authentication on (as in cluster.yaml) with a token of its
own: `env` is the environment a process needs to talk to it (`pipeline run --address`).
All of its processes carry the cluster's own temp dir in their command line, so `stop()`
(and a test that kills one node's raylet) touches this cluster only, never another Ray on
the machine, and nothing here changes the calling process's own environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cluster import HEAD_SYSTEM_CONFIG, NODE_ENV

GIB = 1024**3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    cpus: float
    resources: dict[str, float] = field(default_factory=dict)
    object_store_gib: float = 1.0


def children() -> dict[int, list[int]]:
    """Child pids of every process (from /proc)."""
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids[ppid].append(int(entry.name))
    return kids


def cluster_env(token: str) -> dict[str, str]:
    """This process's environment, set to reach a token-authenticated cluster (and no other)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


class LocalCluster:
    """Head (driver, GCS; no CPUs by default) and worker nodes; `address` is what `--address` takes."""

    def __init__(
        self,
        workers: list[Node],
        head: Node | None = None,
        dashboard: bool = False,
        system_config: dict | None = None,
        token: str | None = None,
    ) -> None:
        self.head = head or Node(cpus=0, object_store_gib=0.5)
        self.workers = list(workers)
        self.dashboard = dashboard
        self.system_config = {**HEAD_SYSTEM_CONFIG, **(system_config or {})}  # as cluster.yaml starts it
        self.env = cluster_env(token or secrets.token_hex(24))
        self.temp_dir = tempfile.mkdtemp(prefix="bp-cluster-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url: str | None = None

    def _start(self, args: list[str], node: Node) -> None:
        cmd = ["ray", "start", *args, f"--num-cpus={int(node.cpus)}", "--num-gpus=0", "--disable-usage-stats"]
        cmd.append(f"--object-store-memory={int(node.object_store_gib * GIB)}")
        if node.resources:
            cmd.append(f"--resources={json.dumps(node.resources)}")
        env = {**self.env, **NODE_ENV}  # as cluster.yaml starts a node
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def start(self) -> LocalCluster:
        head = ["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1"]
        if self.dashboard:
            port = free_port()
            head += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={port}"]
            self.dashboard_url = f"http://127.0.0.1:{port}"
        else:
            head += ["--include-dashboard=false"]
        if self.system_config:
            head.append(f"--system-config={json.dumps(self.system_config)}")
        try:
            self._start(head, self.head)
            for node in self.workers:
                self.add(node)
            self.wait_for_nodes(1 + len(self.workers))
        except BaseException:
            self.stop()
            raise
        return self

    def add(self, node: Node) -> None:
        """Start one more worker node (e.g. to replace a lost one)."""
        self._start([f"--address={self.address}", "--node-ip-address=127.0.0.1"], node)

    def pids(self, needle: str = "") -> list[int]:
        """Processes of this cluster whose command line also contains `needle`."""
        out = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cmd = (
                    Path(f"/proc/{entry.name}/cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
            except OSError:
                continue
            if self.temp_dir in cmd and needle in cmd:
                out.append(int(entry.name))
        return out

    def alive_nodes(self) -> list[dict]:
        """The GCS's node table (alive nodes only), read by a client with this cluster's token."""
        code = (
            "import json, sys; from ray._private.internal_api import get_state_from_address; "
            "nodes = get_state_from_address(sys.argv[1]).node_table(); "
            "print(json.dumps([{'NodeID': n['NodeID'], 'Resources': n['Resources']} for n in nodes if n['Alive']]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, self.address],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else []

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except Exception:  # noqa: BLE001 - the GCS may still be starting
                pass
            time.sleep(1)
        raise RuntimeError(f"the local cluster did not reach {n} nodes")

    def stop(self) -> None:
        """SIGTERM then SIGKILL every process of this cluster and their children (only this one)."""
        kids = children()
        family: list[int] = []
        stack = self.pids()
        while stack:
            pid = stack.pop()
            family.append(pid)
            stack.extend(kids.get(pid, []))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(2 if sig == signal.SIGTERM else 0)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
