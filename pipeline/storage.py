"""Filesystems for local paths and s3:// URIs, built from one set of S3 options.

Model downloads, Parquet reads and writes all go through here, so an S3-compatible
endpoint (MinIO, moto, Ceph) configured once applies everywhere. Credentials come from
the standard AWS chain (environment, profile, instance role) and are never logged.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    import s3fs

    from pipeline.config import S3Options


def is_s3(path: str) -> bool:
    return path.startswith(("s3://", "s3a://"))


def strip_scheme(path: str) -> str:
    """`s3://bucket/key` -> `bucket/key`, the form fsspec and pyarrow want."""
    return path.split("://", 1)[1] if "://" in path else path


def s3_filesystem(options: S3Options) -> s3fs.S3FileSystem:
    """An s3fs filesystem (used for model downloads: its listings carry ETags)."""
    import s3fs

    client_kwargs: dict[str, str] = {}
    if options.region:
        client_kwargs["region_name"] = options.region
    return s3fs.S3FileSystem(
        anon=options.anonymous,
        endpoint_url=options.endpoint_url,
        client_kwargs=client_kwargs,
        # A fresh instance per call: cached instances keep listings that go stale between runs.
        skip_instance_cache=True,
    )


def arrow_filesystem(path: str, options: S3Options) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path within it) for a local path or an s3:// URI."""
    import pyarrow.fs as pafs

    if not is_s3(path):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    kwargs: dict = {"anonymous": options.anonymous}
    if options.region:
        kwargs["region"] = options.region
    if options.endpoint_url:
        url = urlparse(options.endpoint_url)
        kwargs["endpoint_override"] = url.netloc or url.path
        kwargs["scheme"] = url.scheme or "https"
        kwargs.setdefault("region", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return pafs.S3FileSystem(**kwargs), strip_scheme(path).rstrip("/")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
