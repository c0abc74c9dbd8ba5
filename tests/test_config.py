"""Config: the keys users write, validated with messages that name the key."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, PipelineConfig

BASE = {"models": {"classifier": {"source": "m/c"}, "ner": {"source": "m/n"}}}


def test_defaults_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "models:\n"
        "  classifier: {source: a, max_length: 128, long_text: mean}\n"
        "  ner: {source: b, stride: 16, aggregation: first}\n"
        "runtime: {batch_size: 32, dtype: bf16}\n"
    )
    cfg = PipelineConfig.from_yaml(f)
    assert cfg.models.classifier.long_text == "mean"
    assert cfg.models.ner.aggregation == "first"
    assert cfg.models.ner.max_length == 512
    assert cfg.runtime.batch_size == 32 and cfg.runtime.dtype == "bf16"


def test_one_model_is_enough():
    cfg = PipelineConfig.from_dict({"models": {"ner": {"source": "x"}}})
    assert cfg.models.classifier is None


def test_no_model_is_an_error():
    with pytest.raises(ConfigError, match="at least one"):
        PipelineConfig.from_dict({"models": {}})


@pytest.mark.parametrize(
    "override, key",
    [
        ("models.ner.aggregaton=first", "models.ner.aggregaton: unknown key (did you mean 'aggregation'?)"),
        ("runtime.batch_sise=8", "runtime.batch_sise: unknown key (did you mean 'batch_size'?)"),
        ("serve.model.num_replica=2", "serve.model.num_replica: unknown key (did you mean 'num_replicas'?)"),
        (
            "ray.infer_actors={min: 1, max: 2, mx: 3}",
            "ray.infer_actors.mx: unknown key (did you mean 'max'?)",
        ),
        ("models.ner.aggregation=best", "models.ner.aggregation"),
        ("runtime.dtype=fp8", "runtime.dtype"),
        ("runtime.batch_size=0", "runtime.batch_size"),
        ("runtime.device=tpu", "runtime.device"),
        ("models.classifier.long_text=middle", "models.classifier.long_text"),
        ("models.ner.stride=600", "models.ner"),
        ("bogus=1", "bogus: unknown key"),
        ("ray.infer_actors=0", "ray.infer_actors: Input should be greater than 0"),
        ("ray.infer_actors={min: 3, max: 2}", "ray.infer_actors: min (3) must not exceed max (2)"),
        ("ray.infer_actors={min: 1}", "ray.infer_actors.max: Field required"),
        ("s3.max_attempts=0", "s3.max_attempts"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_dict(BASE, [override])
    assert key in str(info.value)


def test_a_key_far_from_every_known_one_gets_no_guess():
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_dict(BASE, ["runtime.zzz=1"])
    assert str(info.value) == "invalid config: runtime.zzz: unknown key"


def test_overrides_parse_yaml_values():
    cfg = PipelineConfig.from_dict(
        BASE, ["runtime.batch_size=16", "models.classifier.top_k=null", "cache_dir=/x"]
    )
    assert cfg.runtime.batch_size == 16 and cfg.models.classifier.top_k is None and cfg.cache_dir == "/x"


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.path=value"):
        PipelineConfig.from_dict(BASE, ["runtime.batch_size"])


def test_yaml_errors_name_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        PipelineConfig.from_yaml(f)
    with pytest.raises(ConfigError, match="not found"):
        PipelineConfig.from_yaml(tmp_path / "missing.yaml")


def test_config_hash_is_stable_and_sensitive():
    a = PipelineConfig.from_dict(BASE)
    assert a.config_hash() == PipelineConfig.from_dict(BASE).config_hash()
    assert a.config_hash() != PipelineConfig.from_dict(BASE, ["runtime.batch_size=8"]).config_hash()


def test_inference_pool_is_a_size_or_a_range():
    assert PipelineConfig.from_dict(BASE, ["ray.infer_actors=3"]).ray.actor_pool() == (3, 3)
    grows = PipelineConfig.from_dict(BASE, ["ray.infer_actors={min: 1, max: 8}"])
    assert grows.ray.actor_pool() == (1, 8)
    pinned = PipelineConfig.from_dict(BASE, ["ray.infer_resources={inference_node: 1}"])
    assert pinned.ray.infer_resources == {"inference_node": 1}


def test_a_deployment_section_that_sets_some_keys_keeps_its_defaults_for_the_others():
    cfg = PipelineConfig.from_dict(BASE, ["serve.model.num_gpus=1", "serve.ingress.num_cpus=0.25"])
    model, ingress = cfg.serve.model, cfg.serve.ingress
    assert (model.num_gpus, model.num_cpus, model.max_ongoing_requests) == (1, 1, 128)
    assert (ingress.num_cpus, ingress.max_ongoing_requests, ingress.max_queued_requests) == (0.25, 256, 1024)
    assert PipelineConfig.model_validate(cfg.for_workers()).serve == cfg.serve
