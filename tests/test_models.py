"""Model sources (local, s3://, hub), safe loading, device and dtype choice."""

from __future__ import annotations

import multiprocessing as mp
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, upload_dir
from safetensors.torch import load_file, save_file

from pipeline import Annotator, PipelineConfig
from pipeline.config import ModelSpec, RuntimeConfig, S3Options
from pipeline.models import (
    ModelLoadError,
    choose_dtype,
    cpu_has_fast_bf16,
    load_models,
    model_revisions,
    resolve_source,
)


def test_pickle_weights_are_refused_unless_allowed(tiny_models, tmp_path):
    from transformers import AutoModelForSequenceClassification

    src = tmp_path / "pickled"
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_models[0]))
    model.save_pretrained(src)
    (src / "model.safetensors").unlink()
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    for f in tiny_models[0].glob("*token*"):
        shutil.copy(f, src)
    assert not list(src.glob("*.safetensors")) and list(src.glob("*.bin"))
    cfg = tiny_config(src, None)
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_models(PipelineConfig.from_dict(cfg))
    cfg["models"]["classifier"]["allow_pickle"] = True
    assert "classifier" in load_models(PipelineConfig.from_dict(cfg))


def test_unreachable_hub_gives_a_clear_error():
    cfg = PipelineConfig.from_dict({"models": {"ner": {"source": "dslim/bert-base-NER"}}})
    with pytest.raises(ModelLoadError) as info:
        load_models(cfg)
    msg = str(info.value)
    assert "dslim/bert-base-NER" in msg and "local directory" in msg and "s3://" in msg


def test_missing_local_dir_is_named(tmp_path):
    cfg = PipelineConfig.from_dict({"models": {"ner": {"source": str(tmp_path / "nope" / "ner")}}})
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_models(cfg)


def test_max_length_beyond_positions_is_refused(tiny_models):
    cfg = tiny_config(tiny_models[0], None, classifier__max_length=1024)
    with pytest.raises(ModelLoadError, match="positions"):
        load_models(PipelineConfig.from_dict(cfg))


def test_dtype_choice():
    cpu = torch.device("cpu")
    assert choose_dtype(RuntimeConfig(dtype="fp32"), cpu) == torch.float32
    assert choose_dtype(RuntimeConfig(dtype="fp16"), cpu) == torch.float16
    assert choose_dtype(RuntimeConfig(dtype="int8"), cpu) == torch.float32, "fp32 weights, then quantized"
    assert choose_dtype(RuntimeConfig(dtype="auto"), torch.device("cuda")) == torch.float16
    auto_cpu = choose_dtype(RuntimeConfig(dtype="auto"), cpu)
    assert auto_cpu == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)


def test_cuda_request_without_cuda_falls_back_with_warning(tiny_models):
    cfg = PipelineConfig.from_dict(tiny_config(tiny_models[0], None, runtime__device="cuda"))
    with pytest.warns(UserWarning, match="CUDA is not available"):
        models = load_models(cfg)
    assert next(models["classifier"].model.parameters()).device.type == "cpu"


def _resolve_in_child(args):
    source, endpoint, cache = args
    path, rev = resolve_source(
        ModelSpec(kind="ner", source=source), S3Options(endpoint_url=endpoint), Path(cache)
    )
    return str(path), rev


def test_s3_source_is_fetched_once_and_cached(tiny_models, s3_server, s3_client, tmp_path, corpus):
    s3_client.create_bucket(Bucket="models")
    upload_dir(s3_client, tiny_models[1], "models", "ner/v1")
    cache = tmp_path / "cache"
    cfg = tiny_config(None, "s3://models/ner/v1/")
    cfg["s3"] = {"endpoint_url": s3_server}
    cfg["cache_dir"] = str(cache)

    # several processes on one node ask at the same moment: one download, one cache entry
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        results = pool.map(_resolve_in_child, [("s3://models/ner/v1/", s3_server, str(cache))] * 3)
    assert len({r for r in results}) == 1
    entries = [p for p in (cache / "s3").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / ".complete").exists()
    assert (entries[0] / "model.safetensors").exists()

    from_s3 = Annotator(PipelineConfig.from_dict(cfg)).annotate(corpus)
    local = Annotator(PipelineConfig.from_dict(tiny_config(None, tiny_models[1]))).annotate(corpus)
    assert from_s3 == local
    assert from_s3 and Annotator(PipelineConfig.from_dict(cfg)).models["ner"].revision == results[0][1]

    # a changed object (new ETag) is a new revision, fetched into a new entry
    s3_client.put_object(Bucket="models", Key="ner/v1/README.md", Body=b"changed")
    path2, rev2 = _resolve_in_child(("s3://models/ner/v1/", s3_server, str(cache)))
    assert rev2 != results[0][1] and Path(path2).exists()

    # new weights overwritten under the same prefix: the next load uses them (never the stale
    # cache entry) and lineage names the new revision
    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_models[1], retrained)
    tensors = load_file(retrained / "model.safetensors")
    tensors["classifier.bias"] = tensors["classifier.bias"] + torch.linspace(
        -2, 2, len(tensors["classifier.bias"])
    )
    save_file(tensors, retrained / "model.safetensors", metadata={"format": "pt"})
    upload_dir(s3_client, retrained, "models", "ner/v1")
    lineage = model_revisions(PipelineConfig.from_dict(cfg))["ner"]["revision"]
    assert lineage not in (results[0][1], rev2)
    fresh = Annotator(PipelineConfig.from_dict(cfg))
    assert fresh.models["ner"].revision == lineage
    new_local = Annotator(PipelineConfig.from_dict(tiny_config(None, retrained))).annotate(corpus)
    assert fresh.annotate(corpus) == new_local != local


def test_s3_source_without_model_is_a_clear_error(s3_server, s3_client, tmp_path):
    s3_client.create_bucket(Bucket="empty")
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_source(
            ModelSpec(kind="ner", source="s3://empty/nothing/"), S3Options(endpoint_url=s3_server), tmp_path
        )


def test_local_revision_follows_content_not_copies_or_mtimes(tiny_models, tmp_path):
    """Two copies of one model (two nodes, say) are one revision; a changed weight is another.
    The night's stages compare revisions, so an mtime must never make a copy look new."""
    import os
    import shutil

    from pipeline.models import _local_fingerprint

    src = tiny_models[1]
    copy = tmp_path / "copy"
    shutil.copytree(src, copy, copy_function=shutil.copy)  # new mtimes
    os.utime(copy / "model.safetensors", (1, 1))
    assert _local_fingerprint(copy) == _local_fingerprint(src)
    with (copy / "model.safetensors").open("r+b") as f:  # one byte of the weights, at the end
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    assert _local_fingerprint(copy) != _local_fingerprint(src)
