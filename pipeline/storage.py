"""Filesystems for local paths and s3:// URIs, built from one set of S3 options.

Model downloads, Parquet reads and writes all go through here, so an S3-compatible
endpoint (MinIO, moto, Ceph) and the retry policy configured once apply everywhere.
Retries are the libraries' own (pyarrow's AWS standard retry strategy, botocore's
"standard" mode): throttling, 5xx answers and dropped connections are retried with
backoff. What still fails after them is told apart from a bad file (`is_transient`) and
reported as a `StorageError` naming the operation and the key. Credentials come from the
standard AWS chain (environment, profile, instance role) and are never logged.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pyarrow.fs as pafs

if TYPE_CHECKING:
    import s3fs

    from pipeline.config import S3Options


class StorageError(RuntimeError):
    """A storage operation that still failed after the configured retries (throttling, 5xx, network)."""

    def __init__(self, operation: str, key: str, cause: BaseException | str) -> None:
        reason = cause if isinstance(cause, str) else f"{type(cause).__name__}: {_first_line(cause)}"
        super().__init__(
            f"{operation} {key} still failed after the configured retries ({reason}). Nothing was "
            "published: run the same command again to resume (raise s3.max_attempts if this repeats)"
        )
        self.operation, self.key = operation, key

    def __reduce__(self):  # crosses Ray task boundaries intact
        return (StorageError.with_message, (self.args[0], self.operation, self.key))

    @classmethod
    def with_message(cls, message: str, operation: str, key: str) -> StorageError:
        err = cls.__new__(cls)
        RuntimeError.__init__(err, message)
        err.operation, err.key = operation, key
        return err

    @classmethod
    def from_exception(cls, exc: BaseException) -> StorageError:
        """From a library's error (e.g. a write inside Ray Data): the operation and key it names."""
        text = _transient_text(exc) or f"{type(exc).__name__}: {exc}"
        where = re.search(r"key '([^']*)' in bucket '([^']*)'", text)
        key = f"s3://{where[2]}/{where[1]}" if where else "(no key named)"
        op = re.search(r"during (\w+) operation", text)
        line = next((ln.strip() for ln in text.splitlines() if _TRANSIENT.search(ln)), _first_line(exc))
        return cls(f"S3 {op[1]}" if op else "storage access to", key, line[:300])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def error_chain(exc: BaseException | None):
    """The exception, its causes and, for Ray's task errors, the remote exception."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        remote = getattr(exc, "cause", None)
        exc = remote if isinstance(remote, BaseException) else (exc.__cause__ or exc.__context__)


def _transient_text(exc: BaseException) -> str | None:
    for e in error_chain(exc):
        text = f"{type(e).__name__}: {e}"
        if _TRANSIENT.search(text):
            return text
    return None


# What the AWS C++ SDK (pyarrow), botocore and the OS say when a request may succeed if tried
# again. A missing key, a denied request or a file that is not Parquet is never in this list.
_TRANSIENT = re.compile(
    r"SLOW_DOWN|SlowDown|THROTTL|Throttl|SERVICE_UNAVAILABLE|ServiceUnavailable|INTERNAL_FAILURE|"
    r"InternalError|NETWORK_CONNECTION|REQUEST_TIMEOUT|RequestTimeout|HTTP status 5\d\d|"
    r"HTTP response code: 5\d\d|curlCode: (?:7|18|28|52|55|56)|Connection reset|"
    r"Connection refused|Connection was closed|connection.*(?:closed|aborted|broken)|"
    r"Timeout was reached|timed out|Broken pipe|Remote end closed|IncompleteRead|"
    r"Unable to connect|Could not connect|EndpointConnectionError|ReadTimeout|ConnectTimeout",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """True when the error says "try again later", not "this file is bad"."""
    for e in error_chain(exc):
        if isinstance(e, StorageError):
            return True
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
    return _transient_text(exc) is not None


def is_s3(path: str) -> bool:
    return path.startswith(("s3://", "s3a://"))


def strip_scheme(path: str) -> str:
    """`s3://bucket/key` -> `bucket/key`, the form fsspec and pyarrow want."""
    return path.split("://", 1)[1] if "://" in path else path


def endpoint_url(options: S3Options) -> str | None:
    """The endpoint to use: `s3.endpoint_url`, else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`."""
    return options.resolved().endpoint_url


def s3_filesystem(options: S3Options) -> s3fs.S3FileSystem:
    """An s3fs filesystem (used for model downloads: its listings carry ETags)."""
    import s3fs

    client_kwargs: dict[str, str] = {}
    if options.region:
        client_kwargs["region_name"] = options.region
    return s3fs.S3FileSystem(
        anon=options.anonymous,
        endpoint_url=endpoint_url(options),
        client_kwargs=client_kwargs,
        # botocore's own retries; s3fs adds its own few on top for the errors it knows.
        config_kwargs=_botocore_config(options),
        # A fresh instance per call: cached instances keep listings that go stale between runs.
        skip_instance_cache=True,
    )


@contextlib.contextmanager
def botocore_retries_only(fs: s3fs.S3FileSystem) -> Iterator[s3fs.S3FileSystem]:
    """API calls on `fs` (a listing) with botocore's `s3.max_attempts` alone: s3fs's own loop
    (5 tries) on top would make up to five times as many attempts, and a failing store took
    10 s to report with `max_attempts: 2`. Downloads keep that loop: it is what retries a
    connection dropped in the middle of a body, which botocore does not."""
    saved = fs.retries
    fs.retries = 1
    try:
        yield fs
    finally:
        fs.retries = saved


def _botocore_config(options: S3Options) -> dict:
    config: dict = {"retries": {"max_attempts": options.max_attempts, "mode": "standard"}}
    if options.connect_timeout_s is not None:
        config["connect_timeout"] = options.connect_timeout_s
    if options.request_timeout_s is not None:
        config["read_timeout"] = options.request_timeout_s
    return config


def arrow_filesystem(path: str, options: S3Options) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path within it) for a local path or an s3:// URI."""
    if not is_s3(path):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    # Resolved here, in the driver, and carried to every worker with the handler: a worker
    # node's environment may not hold the variable.
    return pafs.PyFileSystem(S3Handler(options.resolved().model_dump())), strip_scheme(path).rstrip("/")


def _s3(options: dict) -> pafs.S3FileSystem:
    kwargs: dict = {
        "anonymous": options["anonymous"],
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=options["max_attempts"]),
        "connect_timeout": options["connect_timeout_s"],
        "request_timeout": options["request_timeout_s"],
    }
    if options["region"]:
        kwargs["region"] = options["region"]
    if options["endpoint_url"]:
        url = urlparse(options["endpoint_url"])
        kwargs["endpoint_override"] = url.netloc or url.path
        kwargs["scheme"] = url.scheme or "https"
        kwargs.setdefault("region", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return pafs.S3FileSystem(**kwargs)


class S3Handler(pafs.FileSystemHandler):
    """pyarrow's S3 filesystem, rebuilt from our options wherever it is unpickled.

    A pickled `pyarrow.fs.S3FileSystem` loses its retry strategy (pyarrow 26): shipped to
    a Ray worker it falls back to 3 attempts, and a throttled night fails. This handler
    carries the options instead, so Ray Data's write tasks, its checkpoint writer and our
    read tasks all retry as configured. Streams are pyarrow's own: no Python per byte.
    """

    def __init__(self, options: dict) -> None:
        self.options = options
        self._fs = None

    def __reduce__(self):
        return (S3Handler, (self.options,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Handler) and other.options == self.options

    @property
    def fs(self) -> pafs.S3FileSystem:
        if self._fs is None:
            self._fs = _s3(self.options)
        return self._fs

    def get_type_name(self) -> str:
        return "s3+retries"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the whole bucket root")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
