"""SIGTERM (what kill, systemd and Kubernetes send) stops `pipeline run` and `pipeline serve` as
cleanly as Ctrl-C: one line saying what was left, no stack dump, and a stopped night resumes,
as a crashed (SIGKILLed) one does. Their consoles carry none of Ray's INFO lines."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import _free_port, batch_config, read_output, tiny_config, write_corpus
from pyarrow.fs import LocalFileSystem

from pipeline.publish import Publisher

# What must never reach an operator's terminal on a clean stop or a normal run.
CRASH_LOOK = ("Traceback", "SIGTERM received", "*** ", "core_worker.cc")
RAY_INFO = re.compile(r"\bINFO\b.* -- ")  # Ray's and Serve's console formats (ours has no " -- ")


def _wait_for(predicate, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"ended before the signal:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting:\n{log.read_text()[-3000:]}")


def _assert_quiet(text: str) -> None:
    for sign in CRASH_LOOK:
        assert sign not in text, f"{sign!r} in the output:\n{text[-3000:]}"
    assert not RAY_INFO.search(text), f"a Ray INFO line on the console:\n{text[-3000:]}"


def test_a_night_killed_then_stopped_resumes_each_time_with_every_id_once(ray_cluster, tiny_models, tmp_path):
    """A crash first (SIGKILL to the driver's process group: nothing runs on the way out), then
    an operator's stop (SIGTERM to the command alone, as Kubernetes sends it: one line, no
    stack dump), then the same command finishes the night. Each rerun labels only what was not
    yet written. (Both stops in one night: CI time.)"""
    ids = write_corpus(tmp_path / "in", n_files=8, rows_per_file=120)
    out = tmp_path / "out"
    cfg = batch_config(*tiny_models, str(tmp_path / "in"), str(out), tmp_path / "cache")
    cfg["ray"]["docs_per_batch"] = 50
    cfg["output"].update(min_rows_per_file=50, max_rows_per_file=100)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "c.yaml")]
    cmd += ["--address", ray_cluster.address, "--show", "0"]
    staged = out / "_staging" / "data"

    def files() -> int:
        return len(list(staged.glob("*.parquet"))) if staged.exists() else 0

    def durable() -> int:  # ids whose output is committed (the checkpoint)
        return Publisher(LocalFileSystem(), str(out)).checkpointed()

    log = tmp_path / "crashed.log"
    with open(log, "w") as f:
        crashed = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for(lambda: files() >= 2, 300, crashed, log)
    os.killpg(crashed.pid, signal.SIGKILL)
    crashed.wait()
    after_crash = files()
    assert not (out / "_SUCCESS").exists() and durable() > 0

    log = tmp_path / "stopped.log"
    with open(log, "w") as f:
        stopped = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    _wait_for(lambda: files() > after_crash, 300, stopped, log)  # the rerun got going
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=60) == 128 + signal.SIGTERM
    text = log.read_text()
    assert "resuming" in text
    assert "stopped (SIGTERM): what was written stays staged; the same command resumes the night" in text
    _assert_quiet(text)
    assert not (out / "_SUCCESS").exists()
    before_last = durable()

    last = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert "resuming" in last.stdout
    _assert_quiet(last.stdout + last.stderr)
    assert [r["id"] for r in read_output(out)] == sorted(ids), "each input id exactly once"
    report = json.loads((out / "_report.json").read_text())
    assert report["resumed"] is True
    assert report["documents"] == len(ids) - before_last, (
        "the last run labels exactly what was not yet written"
    )


def _listener(port: int) -> str:
    """The name of the process listening on TCP `port` (Linux's /proc: no psutil here)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                return (fd.parents[1] / "comm").read_text().strip()
    raise AssertionError(f"no process of ours listens on {port}")


def _start_serving(config: Path, env: dict, log: Path, port: int) -> subprocess.Popen:
    """`pipeline serve` in its own process, once it has said it serves and /healthz answers."""
    import httpx

    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", str(config)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def serving() -> bool:
        if "serving on" not in log.read_text():
            return False
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for(serving, 240, proc, log)
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.mark.slow  # spawns the command and its Ray
@pytest.mark.parametrize("proxy", ["ray", "haproxy"])
def test_sigterm_stops_serve_and_deletes_the_app(proxy, tiny_models, tmp_path):
    """Either HTTP front: `ray` (Serve's Python proxy) or `haproxy` (HAProxy on the port, the
    replica serving HTTP itself), which the local instance starts with because the config asks.
    What a killed server leaves behind, and its clearing, is tests/test_serve_front.py's."""
    import httpx

    port = _free_port()
    cfg = tiny_config(*tiny_models)
    cfg["cache_dir"] = str(tmp_path / "cache")
    cfg["serve"] = {"port": port, "proxy": proxy}
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # its own Ray, as on a fresh machine; keys from the environment, as in production
    env = {**os.environ, "RAY_ADDRESS": "local", "BERT_PIPELINE_API_KEYS": "k-one,k-two"}
    env.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    log = tmp_path / "serve.log"
    proc = _start_serving(config, env, log, port)
    try:
        assert _listener(port) == ("haproxy" if proxy == "haproxy" else "ray::ProxyActor")
        classify = f"http://127.0.0.1:{port}/v1/classify"
        assert httpx.post(classify, json={"texts": ["hello"]}, timeout=30).status_code == 401
        key = {"Authorization": "Bearer k-two"}
        answer = httpx.post(classify, json={"texts": ["hello", "world"]}, headers=key, timeout=30)
        assert answer.status_code == 200
        assert [r["error"] for r in answer.json()["results"]] == [None, None]
        assert f"HTTP front: {proxy}" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "stopped (SIGTERM): the app was deleted" in text
    _assert_quiet(text)
    with socket.socket() as s:  # the local Ray and its HTTP front went with the command
        assert s.connect_ex(("127.0.0.1", port)) != 0
