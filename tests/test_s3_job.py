"""S3 for real: corpus and models on a moto S3 server, output written back to S3."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from conftest import batch_config, read_rows, upload_dir, write_corpus

from pipeline import PipelineConfig, batch
from pipeline.storage import arrow_filesystem


def test_s3_corpus_and_models_to_s3_output(
    ray_cluster, tiny_models, s3_server, s3_client, tmp_path, monkeypatch
):
    """The endpoint is set only the standard AWS way (no s3.endpoint_url), and only in this
    process: the Ray workers started before it never saw the variable, so reads, writes,
    checkpoint and model download all work only if the driver carries the endpoint to them."""
    for bucket in ("corpus", "labels", "models"):
        s3_client.create_bucket(Bucket=bucket)
    ids = write_corpus(tmp_path / "in", n_files=2, rows_per_file=60)
    upload_dir(s3_client, tmp_path / "in", "corpus", "dt=2026-11-28")
    upload_dir(s3_client, tiny_models[0], "models", "cls/v1")
    upload_dir(s3_client, tiny_models[1], "models", "ner/v1")

    cfg = batch_config(
        "s3://models/cls/v1/",
        "s3://models/ner/v1/",
        "s3://corpus/dt={date}/",
        "s3://labels/dt={date}/",
        tmp_path / "cache",
    )
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    report = batch.run(PipelineConfig.from_dict(cfg), date="2026-11-28", echo=lambda s: None)
    assert report["status"] == "complete" and report["output_rows"] == len(ids)
    assert report["models"]["ner"]["revision"].startswith("s3-etag:")

    # its own night only: the moto server (and its buckets) serve the whole test session
    listed = s3_client.list_objects_v2(Bucket="labels", Prefix="dt=2026-11-28/")
    keys = [o["Key"] for o in listed["Contents"]]
    assert "dt=2026-11-28/_SUCCESS" in keys and not any("_staging" in k for k in keys)
    marker = json.loads(s3_client.get_object(Bucket="labels", Key="dt=2026-11-28/_SUCCESS")["Body"].read())
    assert marker["output_rows"] == len(ids)

    fs, root = arrow_filesystem("s3://labels/dt=2026-11-28/", PipelineConfig.from_dict(cfg).s3)
    rows = read_rows(pq.read_table(root, filesystem=fs))
    assert [r["id"] for r in rows] == sorted(ids)
    assert all(r["entities"] is not None for r in rows if r["text"] is not None)

    again = batch.run(PipelineConfig.from_dict(cfg), date="2026-11-28", echo=lambda s: None)
    assert again["status"] == "already_complete"


def test_endpoint_from_the_standard_aws_variables(monkeypatch):
    from pipeline.config import S3Options
    from pipeline.storage import endpoint_url

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert endpoint_url(S3Options()) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://all-services:9000")
    assert endpoint_url(S3Options()) == "http://all-services:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")  # the service-specific one wins
    assert endpoint_url(S3Options()) == "http://s3-only:9000"
    assert endpoint_url(S3Options(endpoint_url="http://configured:9000")) == "http://configured:9000"
    fs, _ = arrow_filesystem("s3://bucket/key", S3Options())
    assert fs.handler.options["endpoint_url"] == "http://s3-only:9000"  # carried, not re-read remotely
