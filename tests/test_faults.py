"""Faults a night meets at scale, on small corpora: lost nodes, S3 throttling and outages,
input files that break after the up-front check. Each ends with every id exactly once, or a
clear one-line failure with nothing published and a rerun that resumes (redoing nothing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import batch_config, read_output, read_rows, upload_dir, write_corpus
from faulty_s3 import FaultyS3
from pyarrow.fs import LocalFileSystem

from bench.cluster import LocalCluster, Node, children
from pipeline import PipelineConfig, batch
from pipeline.inputs import InputError
from pipeline.publish import Publisher
from pipeline.storage import StorageError

pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, every: float = 0.2):
    """The predicate's first true value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _staged(out: Path) -> int:
    return len(list((out / "_staging" / "data").glob("*.parquet")))


def _published(out: Path) -> list[Path]:
    return list(out.glob("*.parquet"))


# -- input files that break after the check ----------------------------------------------
@pytest.mark.parametrize("how", ["vanish", "corrupt"])
def test_input_file_breaking_after_the_check_fails_by_name_then_resumes(
    ray_cluster, tiny_models, tmp_path, how
):
    ids = write_corpus(tmp_path / "in", n_files=8, rows_per_file=60)
    victim = tmp_path / "in" / "part-007.parquet"
    saved = victim.read_bytes()
    out = tmp_path / "out"
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(out), tmp_path / "cache")
    result: dict = {}

    def night() -> None:
        try:
            result["report"] = batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
        except Exception as exc:  # noqa: BLE001 - inspected below
            result["error"] = exc

    job = threading.Thread(target=night)
    job.start()
    # run.json is written after the up-front checks and before any read task starts
    _wait(lambda: (out / "_staging" / "run.json").exists() or not job.is_alive(), 120, "the run to begin")
    if how == "vanish":
        victim.unlink()
    else:
        victim.write_bytes(b"PAR1" + b"\0" * 64)
    job.join(timeout=300)
    err = result.get("error")
    assert isinstance(err, InputError), result
    assert "part-007.parquet" in str(err) and "after the check" in str(err)
    assert "\n" not in str(err), "one line, not a traceback"
    assert not (out / "_SUCCESS").exists() and not _published(out)

    victim.write_bytes(saved)
    report = batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
    assert report["status"] == "complete" and report["resumed"] is True
    assert [r["id"] for r in read_output(out)] == sorted(ids)


def test_input_file_vanishing_is_skipped_and_counted_under_skip(ray_cluster, tiny_models, tmp_path):
    ids = write_corpus(tmp_path / "in", n_files=6, rows_per_file=50)
    victim = tmp_path / "in" / "part-005.parquet"
    lost = {r["id"] for r in read_rows(pq.read_table(victim))}
    out = tmp_path / "out"
    cfg = batch_config(
        *tiny_models, str(tmp_path / "in"), str(out), tmp_path / "cache", input__on_bad_file="skip"
    )
    result: dict = {}
    job = threading.Thread(
        target=lambda: result.update(batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None))
    )
    job.start()
    _wait(lambda: (out / "_staging" / "run.json").exists() or not job.is_alive(), 120, "the run to begin")
    victim.unlink()
    job.join(timeout=300)
    assert result["status"] == "complete"
    assert [s["path"].rsplit("/", 1)[-1] for s in result["skipped_files"]] == ["part-005.parquet"]
    assert result["skipped_rows"] == len(lost) == 50
    assert [r["id"] for r in read_output(out)] == sorted(set(ids) - lost), "the rest exactly once"


# -- nodes lost -----------------------------------------------------------------------------
def _night_config(
    tmp_path: Path, tiny_models, n_files: int, rows_per_file: int = 1000, **ray_opts
) -> tuple[Path, Path, list[int]]:
    ids = write_corpus(tmp_path / "in", n_files=n_files, rows_per_file=rows_per_file, seed=3)
    out = tmp_path / "out"
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(out), tmp_path / "cache")
    cfg["ray"].update({"docs_per_batch": 250, "cpus_per_actor": 1, "cpus_per_task": 0.5, **ray_opts})
    cfg["output"].update(min_rows_per_file=rows_per_file, max_rows_per_file=2 * rows_per_file)
    path = tmp_path / "night.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, out, ids


# `pipeline run` with ids checked in shares of this many rows instead of 250,000, so that a small
# night's check runs as tasks on the cluster (one share is checked by the driver itself)
SHARES_OF = "import sys, pipeline.idcheck as c; c.CHUNK_IDS = int(sys.argv.pop(1)); from pipeline.cli import entry; sys.exit(entry())"


def _run_cli(path: Path, cluster: LocalCluster, log: Path, share_rows: int | None = None) -> subprocess.Popen:
    """`pipeline run` as an operator starts it against that cluster (its token, its address)."""
    command = ["-m", "pipeline.cli"] if share_rows is None else ["-c", SHARES_OF, str(share_rows)]
    cmd = [
        sys.executable,
        *command,
        "run",
        str(path),
        "--address",
        cluster.address,
        "--show",
        "0",
    ]
    with open(log, "w") as sink:
        return subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True
        )


def _actor_raylet(cluster: LocalCluster) -> int:
    """The raylet of the node that holds the inference actor (the actor's worker is its child)."""
    found = _raylet_running(cluster, _inference)
    if found is None:
        raise LookupError("no inference actor running")
    return found


def _raylet_running(cluster: LocalCluster, match) -> int | None:
    """The raylet of a node with a worker process whose title `match`es, if any."""
    kids = children()
    for raylet in cluster.pids("/raylet/raylet"):
        for pid in kids.get(raylet, []):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and match(title):
                return raylet
    return None


def _worker_raylet(cluster: LocalCluster) -> int:
    """The raylet of some worker node (not the head's)."""
    for raylet in cluster.pids("/raylet/raylet"):
        if b" --head" not in Path(f"/proc/{raylet}/cmdline").read_bytes().replace(b"\0", b" "):
            return raylet
    raise LookupError("no worker node")


# A worker node that can also host an inference actor: a night that asks for `infer` runs its
# actors there (and its encode tasks anywhere); one that does not ignores the resource.
INFER_NODE = Node(cpus=2, resources={"infer": 1})


@pytest.fixture(scope="module")
def cpu_less_head_cluster():
    """An operator's cluster: a head with no CPUs (driver, GCS) and two 2-CPU worker nodes; a
    lost node is noticed within ~2 s."""
    fast_death = {"health_check_period_ms": 1000, "health_check_failure_threshold": 2}
    with LocalCluster([INFER_NODE, INFER_NODE], system_config=fast_death) as cluster:
        yield cluster


def _id_check(title: str) -> bool:
    return title.startswith(("ray::split_ids", "ray::find_repeats"))


def _inference(title: str) -> bool:
    return "InferActor" in title


# When a worker node is lost: the predicate finds the moment and returns the raylet to kill.
MOMENTS = {
    "id_check": (lambda c, out: _raylet_running(c, _id_check)),  # run.json comes after the check
    "before_first_block": (
        lambda c, out: (out / "_staging" / "run.json").exists() and _raylet_running(c, _inference)
    ),
    "mid_write": (lambda c, out: _staged(out) >= 1 and _raylet_running(c, _inference)),
    "publish": (lambda c, out: (out / "_staging" / "WRITTEN").exists() and _worker_raylet(c)),
}
# The night's shape per moment: (input files, rows each, output rows per file). The id check
# reads every file's ids, so many small files give it time to be seen (in two shares, two
# tasks, each reading 32 files: see SHARES_OF); many output files give the publish (which reads
# and moves each) time to be seen. 5,000-6,000 documents each.
SHAPES = {
    "id_check": (64, 80, 640),
    "before_first_block": (8, 750, 750),
    "mid_write": (8, 750, 750),
    "publish": (8, 750, 50),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_lost_worker_node_costs_the_night_nothing(cpu_less_head_cluster, tiny_models, tmp_path, moment):
    """A worker node SIGKILLed (raylet, object store, its workers) at each moment of a night on
    a cluster whose head has no CPUs: the night ends with every id once and is published. A
    replacement node joins while the night goes on, as an autoscaler's would (`ray start` waits
    seconds on its agents: overlapped with the night, CI time), and serves the next case."""
    cluster = cpu_less_head_cluster
    files, rows, per_file = SHAPES[moment]
    path, out, ids = _night_config(tmp_path, tiny_models, files, rows)
    cfg = yaml.safe_load(path.read_text())
    cfg["output"].update(min_rows_per_file=per_file, max_rows_per_file=2 * per_file)
    path.write_text(yaml.safe_dump(cfg))
    run = _run_cli(path, cluster, tmp_path / "run.log", share_rows=32 * 80 if moment == "id_check" else None)
    # the id check and the publish take a fraction of a second: look often
    every = 0.2 if moment in ("before_first_block", "mid_write") else 0.01
    victim = _wait(lambda: MOMENTS[moment](cluster, out), 300, moment, run, every)
    if moment == "publish":  # hold the driver mid-publish until the node is known dead
        os.kill(run.pid, signal.SIGSTOP)
    began, staged = (out / "_staging" / "run.json").exists(), _staged(out)
    os.kill(victim, signal.SIGKILL)
    replacement = threading.Thread(target=cluster.add, args=(INFER_NODE,))
    replacement.start()
    if moment == "publish":
        time.sleep(3)  # health checks every second, two missed: the node is dead
        assert not (out / "_SUCCESS").exists(), "killed before the night was published"
        os.kill(run.pid, signal.SIGCONT)
    if moment == "id_check":
        assert not began, "killed during the id check"
    elif moment == "before_first_block":
        assert staged == 0, "killed before the first block was written"
    code = run.wait(timeout=600)
    replacement.join(timeout=180)
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log[-4000:]
    report = json.loads((out / "_report.json").read_text())
    assert report["status"] == "complete" and report["output_rows"] == len(ids)
    assert [r["id"] for r in read_output(out)] == sorted(ids), "every id exactly once"


def test_lost_inference_nodes_the_job_moves_on_then_fails_clearly_and_resumes(
    cpu_less_head_cluster, tiny_models, tmp_path
):
    """One night, two node losses (SIGKILL of the whole raylet). The first: the actor restarts
    on the other inference node and the night goes on. The second leaves no node that can host
    it: the run fails in one line with nothing published; a node comes back and the rerun
    labels exactly what was not yet written. On the module's cluster, after the cases above
    (both scenarios in one night, and one cluster for the module: CI time)."""
    cluster = cpu_less_head_cluster
    path, out, ids = _night_config(
        tmp_path, tiny_models, 8, 600, infer_resources={"infer": 1}, actor_node_timeout_s=2
    )
    run = _run_cli(path, cluster, tmp_path / "run.log")
    _wait(lambda: _staged(out) >= 1, 300, "output to be staged", run)
    first = _actor_raylet(cluster)
    os.kill(first, signal.SIGKILL)  # the whole node: raylet, object store, its workers
    # a write already under way on the other node can stage a file before the actor is back:
    # the night goes on only once the restarted actor stages more
    second = _wait(lambda: _raylet_running(cluster, _inference), 300, "the actor to restart", run)
    assert second != first, "the actor moved to the other inference node"
    staged = _staged(out)
    _wait(lambda: _staged(out) > staged, 300, "the night to go on without that node", run)
    os.kill(second, signal.SIGKILL)  # now no alive node has the `infer` resource (nor a CPU)
    assert run.wait(timeout=300) == 1, (tmp_path / "run.log").read_text()[-4000:]
    log = (tmp_path / "run.log").read_text()
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: no alive node of the cluster can host an inference actor"), log[-3000:]
    assert "infer 1" in last and "resumes" in last
    assert "Traceback" not in log and log.count("no alive node") == 1, "one line, no Ray stack trace"
    assert not (out / "_SUCCESS").exists() and not _published(out)

    cluster.add(INFER_NODE)  # the operator brings a node back
    done_before = Publisher(LocalFileSystem(), str(out)).checkpointed()
    assert done_before >= 1000, "output written before the losses is kept"
    rerun = _run_cli(path, cluster, tmp_path / "rerun.log")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-4000:]
    report = json.loads((out / "_report.json").read_text())
    assert report["resumed"] is True and report["output_rows"] == len(ids)
    assert report["documents"] == len(ids) - done_before, "the rerun labels only what was not written"
    assert [r["id"] for r in read_output(out)] == sorted(ids), "every id exactly once"


# -- S3 throttling and outages ------------------------------------------------------------------
@pytest.fixture()
def faulty_s3(s3_server):
    with FaultyS3(s3_server, seed=7) as proxy:
        yield proxy


def _s3_night(
    s3_client, tiny_models, tmp_path, proxy_url: str, n_files: int, **s3_opts
) -> tuple[dict, list[int]]:
    """Corpus, models and output on S3 behind the proxy, under a prefix of this test's own."""
    night = tmp_path.name  # the moto server lives for the whole session
    for bucket in ("corpus", "labels", "models"):
        s3_client.create_bucket(Bucket=bucket)
    ids = write_corpus(tmp_path / "in", n_files=n_files, rows_per_file=80, seed=5)
    upload_dir(s3_client, tmp_path / "in", "corpus", night)
    upload_dir(s3_client, tiny_models[0], "models", f"{night}/cls")
    upload_dir(s3_client, tiny_models[1], "models", f"{night}/ner")
    cfg = batch_config(
        f"s3://models/{night}/cls/",
        f"s3://models/{night}/ner/",
        f"s3://corpus/{night}/",
        f"s3://labels/{night}/",
        tmp_path / "cache",
    )
    cfg["s3"] = {"endpoint_url": proxy_url, **s3_opts}
    cfg["output"].update(min_rows_per_file=80, max_rows_per_file=160)
    return cfg, ids


def _s3_output(cfg: dict) -> list[dict]:
    from pipeline.storage import arrow_filesystem

    fs, root = arrow_filesystem(cfg["output"]["path"], PipelineConfig.from_dict(cfg).s3)
    return read_rows(pq.read_table(root, filesystem=fs))


def _keys(s3_client, cfg: dict) -> list[str]:
    prefix = cfg["output"]["path"].split("/", 3)[3]
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket="labels", Prefix=prefix).get("Contents", [])]


def test_s3_throttling_and_dropped_connections_are_retried(
    ray_cluster, tiny_models, tmp_path, s3_client, faulty_s3
):
    cfg, ids = _s3_night(s3_client, tiny_models, tmp_path, faulty_s3.url, n_files=2)
    faulty_s3.set(0.15)  # 15% of every request: reads, writes, listings, model download
    report = batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
    faulty_s3.set(0.0)
    assert faulty_s3.counts["faults"] >= 10, faulty_s3.counts  # ~25 of ~165 requests
    assert {"503", "500", "drop"} <= set(faulty_s3.counts)
    assert report["status"] == "complete" and report["output_rows"] == len(ids)
    assert [r["id"] for r in _s3_output(cfg)] == sorted(ids), "every id exactly once"


def test_transient_errors_are_never_taken_for_a_bad_file(
    ray_cluster, tiny_models, tmp_path, s3_client, faulty_s3
):
    cfg, _ = _s3_night(s3_client, tiny_models, tmp_path, faulty_s3.url, n_files=3, max_attempts=2)
    cfg["input"]["on_bad_file"] = "skip"
    faulty_s3.set(1.0, ("503",), match=lambda method, path: method == "GET" and "part-001" in path)
    with pytest.raises(StorageError, match=r"part-001\.parquet still failed after the configured retries"):
        batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
    assert faulty_s3.counts["faults"] >= 2
    assert not _keys(s3_client, cfg), "nothing staged or published: the file was not skipped as bad"


def test_s3_outage_mid_run_fails_in_one_line_and_the_rerun_resumes(
    ray_cluster, tiny_models, tmp_path, s3_client, faulty_s3
):
    cfg, ids = _s3_night(s3_client, tiny_models, tmp_path, faulty_s3.url, n_files=8, max_attempts=2)
    cfg["ray"]["docs_per_batch"] = 40
    result: dict = {}

    def night() -> None:
        try:
            result["report"] = batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
        except Exception as exc:  # noqa: BLE001 - inspected below
            result["error"] = exc

    job = threading.Thread(target=night)
    job.start()

    def staged() -> bool:
        keys = _keys(s3_client, cfg)
        committed = [k for k in keys if "/_staging/checkpoint/" in k and k.endswith(".parquet")]
        return any(not k.endswith(".pending.parquet") for k in committed) or not job.is_alive()

    _wait(staged, 300, "a checkpoint to be committed")
    # from now on every write of the night fails: data files and checkpoint files alike
    faulty_s3.set(1.0, ("503",), match=lambda method, path: method in ("PUT", "POST") and "/labels/" in path)
    job.join(timeout=600)
    err = result.get("error")
    assert isinstance(err, StorageError), result
    # one line naming the night's S3 output: the failing request may be a staged file or a
    # directory marker the writer creates on the way (`s3://labels/<night>/`)
    assert f"s3://labels/{tmp_path.name}/" in str(err) and "\n" not in str(err)
    assert "still failed after the configured retries" in str(err) and "Nothing was published" in str(err)
    keys = _keys(s3_client, cfg)
    assert not any(k.endswith("_SUCCESS") or (k.endswith(".parquet") and "_staging" not in k) for k in keys)

    faulty_s3.set(0.0)
    report = batch.run(PipelineConfig.from_dict(cfg), echo=lambda s: None)
    assert report["status"] == "complete" and report["resumed"] is True
    assert report["already_written"] > 0 and report["documents"] == len(ids) - report["already_written"]
    assert [r["id"] for r in _s3_output(cfg)] == sorted(ids)


def test_a_model_store_outage_is_a_storage_error_not_a_config_error(
    s3_client, tiny_models, tmp_path, faulty_s3, capsys
):
    """Listing a model's s3:// source through an outage: exit 1 and "run again" (the store failed),
    not exit 2 (the config is wrong); the library's error stays the cause."""
    from pipeline.cli import main
    from pipeline.models import model_revisions

    cfg, _ = _s3_night(s3_client, tiny_models, tmp_path, faulty_s3.url, n_files=1, max_attempts=2)
    faulty_s3.set(1.0, ("503",), match=lambda method, path: path.startswith("/models"))
    with pytest.raises(StorageError) as caught:
        model_revisions(PipelineConfig.from_dict(cfg))
    assert caught.value.__cause__ is not None, "the original exception is kept"
    path = tmp_path / "night.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: listing model source s3://models/{tmp_path.name}/cls/ still failed"), err
    assert "run the same command again" in err
