"""Closed-loop HTTP load on the Serve API: requests/s and p50/p99 at several concurrencies,
side by side in one run: classification alone (`/v1/classify`, the config's classifiers
only) and every model (`/v1/annotate`).

    python -m bench.serve_load --config examples/local.yaml --seconds 10 --concurrency 1 16 64

Each client sends one single-text request, waits for the answer, sends the next (past 32
clients, from several processes: see CLIENTS_PER_PROCESS). Beside ours:
`peer`, a single-process server of the same classifier (bench.peer: uvicorn, dynamic batches
of 32, torch fp32), and `ceiling`, the split layout's two deployments with no model work at all: its
requests/s is the most any model could reach through HTTP + Serve on this machine. A
benchmark, not a test: it prints figures and ratios and never fails on timing.
"""

# No `from __future__ import annotations`: FastAPI reads the ceiling app's annotations in the
# replica, where string annotations could not be resolved.
import argparse
import asyncio
import json
import logging
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import cast

import httpx
from starlette.requests import Request

SENTENCES = [
    "Angela Merkel met Tim Cook in Berlin to discuss investment in German factories.",
    "Lionel Messi scored twice as Inter Miami beat Orlando City 3-1 on Saturday night.",
    "Shares of Siemens rose 4% in Frankfurt after the company raised its full-year outlook.",
    "Researchers at ETH Zürich unveiled a solar cell that keeps its efficiency for ten years.",
    "President Cyril Ramaphosa arrived in Nairobi for talks with Kenyan leaders.",
    "The match between Real Madrid and Bayern Munich ended 2-2 after a late penalty.",
    "Spotify cut 1,500 jobs, citing slower growth; its shares jumped in New York trading.",
    "Priya Raman joined Nvidia as head of research in Bangalore.",
]


# One Python client process holds this many connections at most. A single asyncio + httpx
# process driving 64 was itself the bottleneck: against one replica it measured 275 req/s with
# p99 at 5x p50 (every one of its 64 clients saw stalls of 1-3 s), where two processes of 32
# each measured 310 req/s with p99 at 1.24x p50, in the same minute on the same server.
CLIENTS_PER_PROCESS = 32


async def _clients(
    url: str, concurrency: int, seconds: float, route: str, start_at: float | None = None
) -> tuple[list[float], int, float]:
    """Closed-loop clients in this process: their latencies, errors and the wall time."""
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        k = i
        while time.perf_counter() < stop:
            text = SENTENCES[k % len(SENTENCES)]
            k += 1
            t = time.perf_counter()
            r = await c.post(url + route, json={"texts": [text]}, timeout=60)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, errors, wall


def _client_process(args: tuple[str, int, float, str, float]) -> tuple[list[float], int, float]:
    return asyncio.run(_clients(*args))


def closed_loop(url: str, concurrency: int, seconds: float, route: str = "/v1/annotate") -> dict[str, float]:
    """`concurrency` closed-loop clients for `seconds`, in as many processes as
    CLIENTS_PER_PROCESS asks, all starting at the same moment."""
    processes = -(-concurrency // CLIENTS_PER_PROCESS)
    if processes == 1:
        parts = [asyncio.run(_clients(url, concurrency, seconds, route))]
    else:
        shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
        start_at = time.time() + 5  # each spawned interpreter imports httpx first
        context = multiprocessing.get_context("spawn")  # never fork a process that runs Ray
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            parts = list(pool.map(_client_process, [(url, n, seconds, route, start_at) for n in shares]))
    latencies = sorted(latency for part in parts for latency in part[0])
    errors = sum(part[1] for part in parts)
    wall = max(part[2] for part in parts)
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else latencies * 99
    return {
        "concurrency": concurrency,
        "client_processes": processes,
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / wall, 2),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
    }


def wait_healthy(url: str, timeout: float = 300, alive=lambda: True) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} never became healthy" + ("" if alive() else ": its process exited"))


def ceiling_app(cfg):
    """Ingress -> handle -> model, shaped like ours but with no encode, model or decode."""
    from fastapi import FastAPI
    from ray import serve
    from ray.serve.deployment import Deployment

    from pipeline.config import MODEL_DEPLOYMENT
    from pipeline.serve import deployment_options

    api = FastAPI()

    class Echo:
        async def __call__(self, texts: list) -> list[dict]:
            return [{"label": None, "label_score": None, "entities": [], "error": None} for _ in texts]

    class EchoIngress:
        def __init__(self, model) -> None:
            self.model = model

        @api.post("/v1/{route}")
        async def annotate(self, route: str, request: Request) -> dict:
            body = await request.json()
            return {"results": await self.model.remote(body["texts"])}

        @api.get("/healthz")
        async def healthz(self) -> dict:
            return {"ok": True}

    # with **options, serve.deployment's overloads read as the decorator-factory form
    model = cast(
        Deployment, serve.deployment(Echo, name=MODEL_DEPLOYMENT, **deployment_options(cfg.serve.model, cfg))
    )
    ingress = serve.ingress(api)(EchoIngress)
    front = cast(
        Deployment, serve.deployment(ingress, name="Ingress", **deployment_options(cfg.serve.ingress, cfg))
    )
    return front.bind(model.bind())


SUITES = {  # name: (route, the config's models of these kinds only)
    "classify": ("/v1/classify", ("classification",)),
    "annotate": ("/v1/annotate", None),
}


def _variants(suite: str, unbatched: bool) -> list[str]:
    """ours batched, optionally unbatched, the peer (classification only), the no-model ceiling."""
    out = ["ours"] + (["ours-unbatched"] if unbatched else [])
    return out + (["peer"] if suite == "classify" else []) + ["ceiling"]


def _suite_overrides(base_cfg, kinds: tuple[str, ...] | None) -> list[str]:
    """--set lines that keep only the models of `kinds` (a suite on a multi-model config)."""
    if kinds is None:
        return []
    kept = {n: m.model_dump(exclude_unset=True) for n, m in base_cfg.models.items() if m.kind in kinds}
    if not kept:
        raise SystemExit(f"the config has no model of kind {kinds}")
    return [f"models={json.dumps(kept)}"]


def _peer(cfg, port: int, threads: int):
    """The single-process peer (bench.peer) on the config's classifier, started and healthy."""
    import subprocess
    import sys

    source = next(m.source for _, m in cfg.models.items() if m.kind == "classification")
    cmd = [sys.executable, "-m", "bench.peer", "--model", str(source), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--threads", str(threads)])
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=120, alive=lambda: proc.poll() is None)
    except BaseException:
        proc.kill()
        raise
    return proc


def run(
    config: str,
    seconds: float,
    levels: list[int],
    overrides: list[str],
    suites: list[str],
    unbatched: bool,
    peer_threads: int = 2,
) -> dict:
    from ray import serve

    from pipeline import PipelineConfig, serve_front
    from pipeline.cluster import ensure_ray
    from pipeline.models import cpu_name
    from pipeline.serve import build_app

    base_cfg = PipelineConfig.from_yaml(config, overrides)
    ensure_ray(None, serve_front.local_env(base_cfg.serve.proxy))
    port = base_cfg.serve.port
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    front = serve_front.check(base_cfg.serve.proxy)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the controller's deploy lines
    print(
        f"CPU: {cpu_name()}; Serve's HTTP front: {front}; {seconds:g} s per level; "
        "closed-loop clients, one text per request"
    )
    results: dict[str, dict[str, list[dict]]] = {}
    for suite in suites:
        route, kinds = SUITES[suite]
        suite_sets = _suite_overrides(base_cfg, kinds)
        for name in _variants(suite, unbatched):
            extra = {
                "ours": [
                    f"serve.max_batch_size={base_cfg.serve.max_batch_size or base_cfg.runtime.batch_size}"
                ],
                "ours-unbatched": ["serve.max_batch_size=1", "serve.batch_wait_timeout_s=0"],
            }.get(name, [])
            cfg = PipelineConfig.from_yaml(config, [*overrides, *suite_sets, *extra])
            peer = None
            if name == "peer":
                peer = _peer(cfg, port + 100, peer_threads)
                url = f"http://127.0.0.1:{port + 100}"
            else:
                app = ceiling_app(cfg) if name == "ceiling" else build_app(cfg)
                serve.run(app, name=name, route_prefix=f"/{name}", blocking=False)
                url = f"http://127.0.0.1:{port}/{name}"
                wait_healthy(url)
            try:
                closed_loop(url, 4, 2, route)  # warm-up
                for level in levels:
                    row = closed_loop(url, level, seconds, route)
                    results.setdefault(suite, {}).setdefault(name, []).append(row)
                    print(
                        f"{suite:9s} {name:15s} c={level:3d}  {row['rps']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                        f"p99 {row['p99_ms']:7.1f} ms  ({row['requests']} ok, {row['errors']} errors)",
                        flush=True,
                    )
            finally:
                if peer is not None:
                    peer.terminate()
                    peer.wait(30)
                else:
                    serve.delete(name)
    summary: dict[str, dict[int, dict[str, float | None]]] = {}
    for suite, by in results.items():
        for i, ours in enumerate(by["ours"]):
            ratios = summary.setdefault(suite, {})[ours["concurrency"]] = {
                "ours_p99_over_p50": _ratio(ours["p99_ms"], ours["p50_ms"]),
                "ceiling_over_ours_rps": _ratio(by["ceiling"][i]["rps"], ours["rps"]),
            }
            if "peer" in by:
                ratios["ours_over_peer_rps"] = _ratio(ours["rps"], by["peer"][i]["rps"])
            if "ours-unbatched" in by:
                ratios["batched_over_unbatched_rps"] = _ratio(ours["rps"], by["ours-unbatched"][i]["rps"])
            print(f"{suite} c={ours['concurrency']:3d}: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    serve.shutdown()
    return {
        "config": config,
        "cpu": cpu_name(),
        "front": front,
        "seconds": seconds,
        "results": results,
        "summary": summary,
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="examples/local.yaml")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    p.add_argument("--unbatched", action="store_true", help="also ours with dynamic batching off")
    p.add_argument("--peer-threads", type=int, default=2, help="the peer's torch threads (default 2)")
    p.add_argument("--out", default="out/bench/serve_load.json")
    a = p.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    report = run(a.config, a.seconds, a.concurrency, a.set, a.suites, a.unbatched, a.peer_threads)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
