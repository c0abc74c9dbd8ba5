"""Scale benchmark: `pipeline run` on 100k and 1M short documents, on a local multi-node cluster.

    python -m bench.scale                    # full run (100k, 1M, 100k again, kill/resume checks), ~16 min here
    python -m bench.scale --quick            # smoke size (CI): a few thousand documents

Each run gets a fresh cluster started the way an operator starts one (`ray start --head`
with no CPUs, a worker node that holds the inference actor through a custom resource, a
worker node for the CPU stages), tiny random-weight models (the framework is measured, not
the model), many Parquet files of short documents, and a sampler that records once a second
the memory of each kind of process, the object store and the documents written. Reports,
per size: wall time, start-up, documents/s after start-up, peak memory per process kind,
spill; the growth of each from the smallest to the largest size (against the smallest size run
before and after the largest, whose gap is the VM's noise); and the durable-progress
check: a run SIGKILLed at 60% of its expected time, then resumed. A benchmark, not a test:
it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pyarrow.fs import LocalFileSystem

from bench.cluster import LocalCluster, Node
from bench.corpus import write_parquet
from bench.sampler import KINDS, Sampler
from pipeline.progress import PROGRESS_ENV
from pipeline.publish import Publisher

FILE_ROWS = 10_000  # input rows per Parquet file, like a night's many files
LAYOUTS = {
    # head: driver + GCS only; node A: the inference actor; node B: read/encode, decode/write
    "multi": lambda token: LocalCluster(
        [Node(cpus=1, resources={"inference_node": 1}), Node(cpus=1)],
        head=Node(cpus=0, object_store_gib=0.5),
        token=token,
    ),
    # the quickstart: one node with both cores
    "single": lambda token: LocalCluster(
        [], head=Node(cpus=2, resources={"inference_node": 1}, object_store_gib=1.5), token=token
    ),
}


def bench_token() -> str:
    """One token for every cluster the bench starts, in this process's environment before Ray
    is first used here: the sampler reads the object store's figures from the GCS."""
    os.environ["RAY_AUTH_MODE"] = "token"
    return os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(24))


def corpus(root: Path, n: int) -> Path:
    path = root / f"corpus-{n}"
    marker = path / "_rows"
    if not (marker.exists() and marker.read_text() == str(n)):
        write_parquet(path, n, seed=n, mix="short", files=max(1, n // FILE_ROWS))
        marker.write_text(str(n))
    return path


def config(root: Path, models: tuple[Path, Path], data: Path, out: Path, docs_per_batch: int) -> Path:
    cfg = {
        "models": {
            "classifier": {"source": str(models[0]), "max_length": 512},
            "ner": {"source": str(models[1]), "max_length": 512, "stride": 128, "aggregation": "first"},
        },
        "runtime": {"batch_size": 128, "dtype": "auto", "num_threads": 1},
        "ray": {
            "infer_actors": 1,
            "cpus_per_actor": 1,
            "cpus_per_task": 0.5,
            "docs_per_batch": docs_per_batch,
            "infer_resources": {"inference_node": 1},
        },
        "input": {"path": str(data)},
        "output": {"path": str(out), "min_rows_per_file": FILE_ROWS, "max_rows_per_file": 100_000},
        "cache_dir": str(root / "cache"),
    }
    path = root / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _command(cfg: Path, address: str, overwrite: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--address", address, "--show", "0"]
    return cmd + (["--overwrite"] if overwrite else [])


def run_once(cluster: LocalCluster, cfg: Path, out: Path, log: Path, kill_after: float | None = None) -> dict:
    """One `pipeline run` (sampled); with kill_after, SIGKILL it then and report the checkpoint."""
    started = time.time()
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            _command(cfg, cluster.address, overwrite=True),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**cluster.env, PROGRESS_ENV: "1"},  # the log then says what was labeled at a kill
            start_new_session=True,
        )
        with Sampler(proc.pid, cluster.temp_dir, cluster.address, out) as sampler:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    result: dict = {
        "wall_s": round(time.time() - started, 1),
        "returncode": proc.returncode,
        "peak_mib": sampler.peaks_mib(),
        "peak_anon_mib": sampler.peaks_mib("anon_kib"),
        "largest_process_mib": sampler.largest_mib(),
        "peak_written": sampler.peak_written(),
        "max_processes": {k: max((x["processes"][k] for x in sampler.series), default=0) for k in KINDS},
        "cpu_share": sampler.cpu_share(),
        "series": sampler.series,
    }
    if kill_after is not None and proc.returncode != 0:
        result["killed_at_s"] = kill_after
        result["checkpointed_rows"] = Publisher(LocalFileSystem(), str(out)).checkpointed()
        result["staged_rows"] = sampler.series[-1]["written"] if sampler.series else 0
        return result
    report = json.loads((out / "_report.json").read_text())
    result["report"] = {k: v for k, v in report.items() if not isinstance(v, (dict, list))}
    startup = report.get("startup_s") or 0.0
    docs = report["documents"]
    result["running_docs_per_s"] = round(docs / max(1e-9, report["wall_s"] - startup), 1)
    result["running_s_per_1k"] = round(1000 * (report["wall_s"] - startup) / max(1, docs), 3)
    # the model's own share: a slower night with the same forward time is the framework's doing
    result["forward_s_per_1k"] = round(1000 * report["forward_s"] / max(1, docs), 3)
    result["forward_cpu_s_per_1k"] = round(1000 * report.get("forward_cpu_s", 0.0) / max(1, docs), 3)
    result["within_run_anon_mib"] = within_run(result["series"])
    result["cpu_ms_per_doc"] = {
        part: cpu_per_doc(result["series"], lo, hi)
        for part, (lo, hi) in {"run": (0.0, 1.0), "early": (0.05, 0.3), "late": (0.7, 0.95)}.items()
    }
    return result


def cpu_per_doc(series: list[dict], lo: float, hi: float) -> dict[str, float]:
    """CPU ms per document written, per process kind, between the samples where `lo` and `hi` of
    the output was written; with the host's busy, idle and stolen (hypervisor) ms per document.
    A run that grows slower shows here as the kind whose CPU per document grew, or as none of them
    and the host's steal or idle instead."""
    total = series[-1]["written"] if series else 0
    span = [x for x in series if x["written"] and lo * total <= x["written"] <= hi * total]
    if len(span) < 2 or span[-1]["written"] == span[0]["written"]:
        return {}
    a, b = span[0], span[-1]
    docs = b["written"] - a["written"]
    out = {k: round(1000 * (b["cpu_s"][k] - a["cpu_s"][k]) / docs, 3) for k in KINDS}
    for k in ("busy", "idle", "steal"):
        if k in a.get("host_cpu_s", {}) and k in b.get("host_cpu_s", {}):
            out[f"host_{k}"] = round(1000 * (b["host_cpu_s"][k] - a["host_cpu_s"][k]) / docs, 3)
    out["wall"] = round(1000 * (b["t"] - a["t"]) / docs, 3)
    return out


def within_run(series: list[dict], field: str = "anon_kib") -> dict[str, dict[str, float]]:
    """Median memory per kind (MiB) while the first quarter of the documents is being written and
    while the last: flat memory keeps these equal, whatever the peaks (which catch transients,
    e.g. a worker process starting while another exits)."""
    total = series[-1]["written"] if series else 0

    def median(lo: float, hi: float, kind: str) -> float:
        vals = sorted(x[field][kind] for x in series if lo * total < x["written"] <= hi * total)
        return round(vals[len(vals) // 2] / 1024, 1) if vals else 0.0

    return {k: {"early": median(0.05, 0.3, k), "late": median(0.7, 0.95, k)} for k in KINDS}


def resume_check(layout: str, root: Path, cfg: Path, out: Path, full: dict, n: int) -> dict:
    """Kill a run at 60% of the full run's time, rerun it, and compare what was redone."""
    kill_at = 0.6 * full["wall_s"]
    cluster = LAYOUTS[layout](bench_token())
    with cluster:
        killed = run_once(cluster, cfg, out, root / f"{layout}-killed.log", kill_after=kill_at)
        rerun_cmd = _command(cfg, cluster.address, overwrite=False)
        t0 = time.time()
        done = subprocess.run(rerun_cmd, capture_output=True, text=True, env=cluster.env)
        rerun_s = time.time() - t0
    report = json.loads((out / "_report.json").read_text())
    startup = full["report"].get("startup_s") or 0.0
    estimate = min(n, int(max(0.0, kill_at - startup) * full["running_docs_per_s"]))
    labeled = last_labeled(root / f"{layout}-killed.log")
    checkpointed = killed.get("checkpointed_rows", 0)
    return {
        "layout": layout,
        "killed_at_s": round(kill_at, 1),
        "labeled_before_kill": labeled,
        "labeled_before_kill_est": estimate,
        "checkpointed_before_kill": checkpointed,
        "durable_share": round(checkpointed / labeled, 3) if labeled else None,
        "rerun_documents": report["documents"],
        "rerun_redid": report["documents"] - (n - checkpointed),
        "rerun_s": round(rerun_s, 1),
        "rerun_ok": done.returncode == 0 and report.get("output_rows") == n,
    }


def last_labeled(log: Path) -> int:
    """The documents the models had run on at most a second before the kill, from the run's
    last progress line (printed every second in the bench): labeled, plus those on their way
    to decode and write. Not an estimate from the full run's start-up and rate, which counted
    every second a killed run's start-up took longer as 3,000 documents labeled."""
    last = re.findall(
        r"^labeled ([\d,]+) of [\d,]+ documents[^,\n]*(?:, ([\d,]+) through the model)?",
        log.read_text(errors="replace"),
        flags=re.MULTILINE,
    )
    if not last:
        return 0
    labeled, inferred = last[-1]
    return int((inferred or labeled).replace(",", ""))


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 7), squeeze=False)
    for col, run in enumerate(runs):
        series = run["series"]
        t = [s["t"] for s in series]
        written = [s["written"] for s in series]
        rate, j = [], 0  # over 30 s: output lands a file (thousands of rows) at a time
        for i, (ti, wi) in enumerate(zip(t, written, strict=True)):
            while t[j] < ti - 30:  # j: the first sample of the window ending at i
                j += 1
            rate.append((wi - written[j]) / max(1e-9, ti - t[j]) if i > j else 0.0)
        ax = axes[0][col]
        ax.plot(t, written, label="documents written")
        ax2 = ax.twinx()
        ax2.plot(t, rate, color="tab:orange", alpha=0.5, label="documents/s written (30 s window)")
        ax.set_title(
            f"{run['documents']:,} documents ({run['layout']}{', again' if run.get('again') else ''})"
        )
        ax.set_xlabel("s")
        ax.legend(loc="upper left")
        ax2.legend(loc="lower right")
        ax = axes[1][col]
        for kind in KINDS:
            ax.plot(t, [s["pss_kib"][kind] / 1024 for s in series], label=kind)
        stored = [s for s in series if "object_store" in s]  # sampled every few seconds
        ax.plot(
            [s["t"] for s in stored],
            [s["object_store"] / 1024 for s in stored],
            label="object store",
            linestyle="--",
        )
        ax.set_ylabel("MiB (PSS, summed per kind)")
        ax.set_xlabel("s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def past(small_run: dict, large_run: dict, n: int) -> dict[str, float | None]:
    """Per kind: the large run's peak PSS once it had written more than `n` documents, over the
    `n`-document run's peak. Growth with the corpus shows here; a start-up transient of the
    large run (which the plain peak ratio counts) does not."""
    late = [x for x in large_run["series"] if x["written"] > n]
    out: dict[str, float | None] = {}
    for k in KINDS:
        base = small_run["peak_mib"][k]
        out[k] = round(max(x["pss_kib"][k] for x in late) / 1024 / base, 3) if late and base else None
    return out


PEAKS = ("peak_mib", "peak_anon_mib", "largest_process_mib")  # per-kind figures growth compares


def mean_run(runs: list[dict]) -> dict:
    """The figures `growth` compares, averaged over runs of one size."""
    out: dict = {}
    for key in PEAKS:
        out[key] = {k: sum(r[key][k] for r in runs) / len(runs) for k in runs[0][key]}
    for key in ("running_s_per_1k", "forward_s_per_1k", "forward_cpu_s_per_1k"):
        out[key] = sum(r[key] for r in runs) / len(runs)
    return out


def growth(a: dict, b: dict) -> dict:
    """Run b's figures over run a's: peaks per process kind, time per document after start-up,
    and the model's forward time (and CPU) per document."""
    out: dict = {
        key: {k: round(b[key][k] / a[key][k], 3) if a[key][k] else None for k in a[key]} for key in PEAKS
    }
    out["time_per_doc"] = round(b["running_s_per_1k"] / a["running_s_per_1k"], 3)
    out["forward_per_doc"] = round(b["forward_s_per_1k"] / a["forward_s_per_1k"], 3)
    if a["forward_cpu_s_per_1k"]:
        out["forward_cpu_per_doc"] = round(b["forward_cpu_s_per_1k"] / a["forward_cpu_s_per_1k"], 3)
    return out


def table(results: dict) -> str:
    kinds = [*KINDS, "object_store", "spilled"]
    head = "| documents | layout | wall s | start-up s | docs/s after start-up | " + " | ".join(
        f"peak {k} MiB" for k in kinds
    )
    lines = [head + " |", "|" + "---|" * (5 + len(kinds))]
    for r in results["runs"]:
        lines.append(
            f"| {r['documents']:,}{' (again)' if r.get('again') else ''} | {r['layout']} | {r['report']['wall_s']} | {r['report'].get('startup_s')} | "
            f"{r['running_docs_per_s']} | " + " | ".join(str(r["peak_mib"][k]) for k in kinds) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="multi")
    p.add_argument("--docs-per-batch", type=int, default=2048)
    p.add_argument("--no-kill", action="store_true", help="skip the kill-and-resume checks")
    p.add_argument(
        "--no-repeat", action="store_true", help="run the smallest size once only (no noise floor)"
    )
    p.add_argument("--quick", action="store_true", help="smoke size: 3,000 and 6,000 documents")
    p.add_argument("--out", default="out/bench")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = [3_000, 6_000]
    root = Path(args.out).resolve() / "scale"
    root.mkdir(parents=True, exist_ok=True)

    from pipeline.demo.random_models import SIZES, build_random_pair

    models = build_random_pair(root / "models" / "tiny", **SIZES["tiny"])
    results: dict = {"sizes": args.sizes, "layout": args.layout, "runs": [], "resume": []}
    by_size: dict[int, tuple[Path, Path, dict]] = {}
    small, large = min(args.sizes), max(args.sizes)
    # the smallest size again after the largest: the VM's speed drifts by 10-25% between runs a
    # few minutes apart, so growth is measured against both small runs, and their gap is printed
    # as this run's noise floor
    repeat = [small] if large > small and not args.no_repeat else []
    for i, n in enumerate([*args.sizes, *repeat]):
        again = i >= len(args.sizes)
        data = corpus(root, n)
        out = root / f"out-{n}"
        cfg = config(root, models, data, out, args.docs_per_batch)
        print(f"== {n:,} documents, {args.layout} layout{' (again)' if again else ''}", flush=True)
        log = root / f"run-{n}{'-again' if again else ''}.log"
        with LAYOUTS[args.layout](bench_token()) as cluster:
            run = run_once(cluster, cfg, out, log)
        if run["returncode"] != 0:
            raise SystemExit(f"pipeline run failed on {n} documents: see {log}")
        run.update(documents=n, layout=args.layout, again=again)
        results["runs"].append(run)
        by_size.setdefault(n, (cfg, out, run))
        print(
            f"   {run['report']['wall_s']} s, start-up {run['report'].get('startup_s')} s, "
            f"{run['running_docs_per_s']} docs/s after start-up; peak MiB {run['peak_mib']}",
            flush=True,
        )
    smalls = [r for r in results["runs"] if r["documents"] == small]
    a, b = mean_run(smalls), by_size[large][2]
    results["growth"] = growth(a, b)
    results["growth"]["past_small"] = past(a, b, small)
    if len(smalls) > 1:  # the same size twice: what this VM's noise alone does to each figure
        results["noise"] = growth(smalls[0], smalls[1])
    results["cpu_share"] = b["cpu_share"]
    if not args.no_kill:
        cfg, out, measured = by_size[small]
        for layout in ("single", "multi"):
            full = measured
            if layout != args.layout:  # the full run it is compared with, on this layout
                with LAYOUTS[layout](bench_token()) as cluster:
                    full = run_once(cluster, cfg, out, root / f"{layout}-full.log")
            print(f"== kill at 60% and resume: {small:,} documents, {layout} layout", flush=True)
            check = resume_check(layout, root, cfg, out, full, small)
            results["resume"].append(check)
            print(f"   {check}", flush=True)
    (root / "scale.json").write_text(json.dumps(results))
    chart(results, root / "scale.png")
    print()
    print(table(results))
    print()
    versus = f"{small:,} (mean of {len(smalls)} runs)" if len(smalls) > 1 else f"{small:,}"
    print(f"growth {versus} -> {large:,}: peak memory per kind {results['growth']['peak_mib']}")
    print(f"  peak anonymous memory per kind {results['growth']['peak_anon_mib']}")
    print(f"  largest single process per kind {results['growth']['largest_process_mib']}")
    print(f"  {large:,}: documents written when each kind peaked {b['peak_written']}")
    print(
        f"  peak after the first {small:,} documents, against the {small:,} run's: {results['growth']['past_small']}"
    )
    for r in results["runs"]:
        print(
            f"  {r['documents']:,}: anonymous MiB, median early -> late in the run: {r['within_run_anon_mib']}"
        )
        print(
            f"    peak anonymous MiB per kind {r['peak_anon_mib']}; model forward s per 1k docs "
            f"{r['forward_s_per_1k']} (CPU {r['forward_cpu_s_per_1k']})"
        )
        for part, per_doc in r["cpu_ms_per_doc"].items():
            print(f"    CPU ms per document written, {part}: {per_doc}")
    print(f"  processes per kind: {smalls[0]['max_processes']} -> {b['max_processes']}")
    print(
        f"time per document after start-up: x{results['growth']['time_per_doc']} "
        f"(the model's forward alone: x{results['growth']['forward_per_doc']})"
    )
    if "noise" in results:
        noise = results["noise"]
        print(
            f"noise floor, {small:,} run again over the first: peak memory per kind {noise['peak_mib']}; "
            f"time per document x{noise['time_per_doc']} (forward x{noise['forward_per_doc']})"
        )
    print(f"CPU share by process kind ({large:,}): {results['cpu_share']}")
    for check in results["resume"]:
        print(
            f"resume ({check['layout']}): killed at {check['killed_at_s']} s, {check['labeled_before_kill']} "
            f"labeled (estimate from the full run: ~{check['labeled_before_kill_est']}), "
            f"{check['checkpointed_before_kill']} checkpointed ({check['durable_share']}); the rerun "
            f"labeled {check['rerun_documents']} (redid {check['rerun_redid']}), ok={check['rerun_ok']}"
        )
    print(f"\nwrote {root / 'scale.json'} and {root / 'scale.png'}")


if __name__ == "__main__":
    main()
