"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema) that fits jobs/nightly.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

from pipeline import PipelineConfig
from pipeline.cluster import HEAD_SYSTEM_CONFIG, NODE_ENV

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_rays_schema():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5")) for t in types.values())
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"] if "ray start" in c)
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    flag = head.split("--system-config=", 1)[1].split()[0].strip("'")
    assert json.loads(flag) == HEAD_SYSTEM_CONFIG, "the head runs with the system config the bench measured"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        env = dict(word.split("=", 1) for word in start.split("ray start", 1)[0].split())
        assert env == {**NODE_ENV, "RAY_AUTH_MODE": "token"}, f"{key}: every node starts as the bench's do"


def test_nightly_config_is_valid_and_fits_the_gpu_pool():
    cfg = PipelineConfig.from_yaml(ROOT / "jobs" / "nightly.yaml")
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    gpu_nodes = max(
        t.get("max_workers", 0)
        for t in config["available_node_types"].values()
        if t["node_config"]["InstanceType"].startswith("g5")
    )
    low, high = cfg.ray.actor_pool()
    assert cfg.ray.gpus_per_actor == 1 and 1 <= low < high <= gpu_nodes, (
        "a pool that grows with the GPU nodes"
    )
    assert cfg.input.path.startswith("s3://") and "{date}" in cfg.output.path
