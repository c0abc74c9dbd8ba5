"""What a killed local instance leaves behind (Serve's HAProxy, Ray's agents) is found, and only
that, and stopped by the next start; HAProxy failing to bind reads as one line naming the holders."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline import serve_front
from pipeline.config import ConfigError


def _fake_haproxy(*args: str) -> subprocess.Popen:
    """A process that looks like Serve's HAProxy: argv[0] ends in haproxy, its config under
    Serve's HAProxy directory. Its parent is this test, not a Ray worker."""
    return subprocess.Popen(
        [
            "bash",
            "-c",
            'exec -a /opt/x/bin/haproxy "$0" -c "import time; time.sleep(60)" "$@"',
            sys.executable,
            *args,
        ]
    )


@pytest.fixture
def fakes():
    procs = [
        _fake_haproxy("-db", "-f", "/tmp/haproxy-serve/abc/haproxy.cfg", "-dR"),  # Serve's
        _fake_haproxy("-db", "-f", "/etc/haproxy/haproxy.cfg"),  # somebody else's HAProxy
    ]
    time.sleep(0.5)  # exec'd
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_only_serves_haproxy_without_a_ray_parent_is_an_orphan_and_is_stopped(fakes):
    ours, theirs = fakes
    found = serve_front.orphans()
    assert ours.pid in found and theirs.pid not in found
    assert serve_front.local_env("ray") == {}
    assert ours.poll() is None, "a config that asks for ray leaves HAProxy processes alone"
    env = serve_front.local_env("haproxy")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert ours.wait(10) != 0, "the orphan was stopped"
    assert theirs.poll() is None, "another HAProxy is not ours to stop"


def test_haproxy_bind_failure_reads_as_one_line_naming_the_holders(fakes):
    ours, _ = fakes
    failure = RuntimeError(
        "HAProxy crashed during startup: [NOTICE]   (24037) : haproxy version is 2.8.25\n"
        "[ALERT]    (24037) : Binding [/tmp/haproxy-serve/x/haproxy.cfg:45] for frontend "
        "prometheus: cannot bind socket (Address already in use) for [0.0.0.0:9101]\n"
    )
    why = serve_front.start_failure(failure)
    assert why is not None and "\n" not in why
    assert "cannot bind socket (Address already in use) for [0.0.0.0:9101]" in why
    assert str(ours.pid) in why
    assert serve_front.start_failure(RuntimeError("the GCS is gone")) is None


def test_haproxy_without_a_binary_is_refused_before_ray_starts(monkeypatch):
    from ray.serve._private import haproxy

    monkeypatch.setattr(haproxy, "RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    with pytest.raises(ConfigError, match="needs an HAProxy binary"):
        serve_front.local_env("haproxy")
    assert serve_front.local_env(None) == {}


def test_ray_agents_whose_raylet_is_gone_are_stopped_before_a_local_start():
    """What a SIGKILLed driver's local Ray leaves besides HAProxy: its dashboard agent, on a
    fixed port. A stand-in whose parent is this test, not a raylet, counts as left behind."""
    from pipeline.cluster import orphaned_agents, stop_orphaned_agents

    agent = subprocess.Popen(["bash", "-c", 'exec -a "ray::DashboardAgent" sleep 60'])
    other = subprocess.Popen(["bash", "-c", 'exec -a "ray::IDLE" sleep 60'])
    try:
        time.sleep(0.5)
        found = orphaned_agents()
        assert agent.pid in found and other.pid not in found
        stop_orphaned_agents()
        assert agent.wait(10) != 0
        assert other.poll() is None
    finally:
        for p in (agent, other):
            p.kill()
            p.wait()
