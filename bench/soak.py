"""A soak of the online API: `pipeline serve` as an operator starts it, under closed-loop clients
for minutes, with each minute's requests, failures and latency, and each Serve replica's memory.

    python -m bench.soak --config examples/local.yaml --clients 16 --minutes 10

Every client sends a request of 1-8 texts (news sentences, long reports cut at serve.max_chars,
now and then a null or an empty text), waits for the answer, sends the next. Each replica's
RSS (and anonymous PSS: heaps and Python objects, what a leak grows) is read at the end of every
minute; growth is the last minute over the first, after warm-up. A benchmark, not a test: it
prints figures and says which targets it met (0 failures, growth <= 10%), and never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.cluster import free_port
from bench.measure import _rss_kb
from bench.sampler import _cmdline, _memory_kib
from bench.serve_load import SENTENCES, wait_healthy
from pipeline.models import cpu_name

MAX_GROWTH = 1.10


def _texts(rng: random.Random) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(rng.randint(1, 8)):
        pick = rng.random()
        if pick < 0.05:
            out.append(rng.choice([None, "", "   "]))
        elif pick < 0.15:
            out.append(" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(10, 40))))
        else:
            out.append(rng.choice(SENTENCES))
    return out


def replicas() -> dict[int, str]:
    """{pid: 'Model' | 'Ingress' | 'proxy'} of the Serve processes on this machine."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        cmd = _cmdline(int(entry.name))
        if cmd.startswith("ray::ServeReplica:"):  # ray::ServeReplica:<app>:<deployment>[.<method>]
            found[int(entry.name)] = cmd.split()[0].rsplit(":", 1)[-1].split(".")[0]
        elif cmd.startswith("ray::ProxyActor"):
            found[int(entry.name)] = "proxy"
    return found


def memory_mib() -> dict[str, dict[str, float]]:
    """{`Model#pid`: {rss, anon}} in MiB per Serve process: RSS, and anonymous PSS (heaps and
    Python objects, where a leak shows without the shared libraries' pages)."""
    return {
        f"{kind}#{pid}": {"rss": round(_rss_kb(pid) / 1024, 1), "anon": round(_memory_kib(pid)[1] / 1024, 1)}
        for pid, kind in sorted(replicas().items())
    }


async def soak(url: str, clients: int, minutes: int, headers: dict[str, str]) -> list[dict]:
    per_minute: list[dict] = []
    start = time.perf_counter()
    stop = start + 60 * minutes
    latencies: list[list[float]] = [[] for _ in range(minutes)]
    failures = [0] * minutes
    statuses: list[dict[int, int]] = [{} for _ in range(minutes)]

    async def client(c: httpx.AsyncClient, i: int) -> None:
        rng = random.Random(i)
        while (now := time.perf_counter()) < stop:
            minute = min(int((now - start) // 60), minutes - 1)
            t = time.perf_counter()
            try:
                r = await c.post(url + "/v1/annotate", json={"texts": _texts(rng)}, timeout=60)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            statuses[minute][status] = statuses[minute].get(status, 0) + 1
            if status == 200:
                latencies[minute].append(time.perf_counter() - t)
            else:
                failures[minute] += 1

    async def sampler() -> None:
        for minute in range(minutes):
            await asyncio.sleep(max(0.0, start + 60 * (minute + 1) - time.perf_counter()))
            lat = sorted(latencies[minute])
            memory = memory_mib()
            q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 99 or [0.0] * 99
            row: dict[str, Any] = {
                "minute": minute + 1,
                "requests": len(lat) + failures[minute],
                "failures": failures[minute],
                "statuses": statuses[minute],
                "p50_ms": round(q[49] * 1000, 1),
                "p99_ms": round(q[98] * 1000, 1),
                "memory_mib": memory,
            }
            per_minute.append(row)
            print(
                f"minute {row['minute']:2d}: {row['requests']:6d} requests, {row['failures']} failed, "
                f"p50 {row['p50_ms']:6.1f} ms, p99 {row['p99_ms']:6.1f} ms, RSS MiB "
                + ", ".join(f"{k} {v['rss']}" for k, v in memory.items()),
                flush=True,
            )

    async with httpx.AsyncClient(headers=headers, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(sampler(), *(client(c, i) for i in range(clients)))
    return per_minute


def growth(per_minute: list[dict], measure: str = "rss") -> dict[str, float]:
    """Each Serve process's memory at the end of the last minute over the end of the first
    (warm-up: models loaded, every batch shape met once)."""
    first, last = per_minute[0]["memory_mib"], per_minute[-1]["memory_mib"]
    return {
        k: round(last[k][measure] / first[k][measure], 3) for k in first if k in last and first[k][measure]
    }


def run(config: str, clients: int, minutes: int, overrides: list[str]) -> dict:
    port = free_port()
    key = "soak-" + os.urandom(8).hex()
    env = {**os.environ, "RAY_ADDRESS": "local", "BERT_PIPELINE_API_KEYS": key}
    sets = [a for s in [*overrides, f"serve.port={port}"] for a in ("--set", s)]
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", config, *sets],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        headers = {"Authorization": f"Bearer {key}"}
        per_minute = asyncio.run(soak(url, clients, minutes, headers))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    grew = growth(per_minute)
    failed = sum(m["failures"] for m in per_minute)
    report = {
        "config": config,
        "cpu": cpu_name(),
        "clients": clients,
        "minutes": minutes,
        "per_minute": per_minute,
        "requests": sum(m["requests"] for m in per_minute),
        "failures": failed,
        "memory_growth": grew,
        "anon_growth": growth(per_minute, "anon"),
        "targets_met": {
            "no_failures": failed == 0,
            "growth_within_10pct": all(g <= MAX_GROWTH for g in grew.values()),
        },
    }
    print(
        f"{report['requests']} requests, {failed} failed; RSS last/first minute: {grew} "
        f"(anonymous: {report['anon_growth']}); "
        f"targets met: {report['targets_met']} (on {report['cpu']})"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="examples/local.yaml")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default="out/bench/soak.json")
    a = p.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run(a.config, a.clients, a.minutes, a.set)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
