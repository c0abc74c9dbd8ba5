"""Filesystems for local paths and s3:// URIs, built from one set of S3 options.

Model downloads, Parquet reads and writes all go through here, so an S3-compatible
endpoint (MinIO, moto, Ceph) configured once applies everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import s3fs

    from pipeline.config import S3Options


def is_s3(path: str) -> bool:
    return path.startswith("s3://") or path.startswith("s3a://")


def strip_scheme(path: str) -> str:
    """`s3://bucket/key` -> `bucket/key`, the form fsspec and pyarrow want."""
    return path.split("://", 1)[1] if "://" in path else path


def s3_filesystem(options: S3Options) -> s3fs.S3FileSystem:
    """An s3fs filesystem; credentials come from the standard AWS chain (env, profile, role)."""
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


def pyarrow_filesystem(options: S3Options):
    """A pyarrow filesystem over s3fs, for Ray Data reads and writes of s3:// paths."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(s3_filesystem(options)))
