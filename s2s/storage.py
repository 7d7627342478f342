"""One door to every byte: local paths and ``s3://bucket/prefix`` URIs.

Every other module goes through these helpers; none builds a boto3 client or a pyarrow filesystem
of its own. S3 uses the standard AWS credential chain and honours ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for MinIO, Ceph or a local test endpoint. Failures surface as
:class:`StorageError` naming the URI and the cause (missing bucket, access denied, unreachable
endpoint, bad credentials) instead of an SDK stack trace.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

__all__ = [
    "StorageError",
    "FileRef",
    "is_s3",
    "absolute",
    "filesystem",
    "join",
    "expand",
    "check_inputs",
    "check_output",
    "exists",
    "read_bytes",
    "write_bytes",
    "open_input",
    "open_output",
    "remove_tree",
]

_GLOB_CHARS = "*?["
# Fail fast on a dead endpoint: the SDK defaults retry for minutes.
_CONNECT_TIMEOUT_S = 5.0
_REQUEST_TIMEOUT_S = 60.0
_MAX_ATTEMPTS = 3


class StorageError(OSError):
    """A URI cannot be read or written; the message names the URI and the cause."""


@dataclass(frozen=True)
class FileRef:
    """One concrete input file: its URI, size in bytes and modification time (ns since epoch)."""

    uri: str
    size: int
    mtime_ns: int | None


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with ``/``."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def absolute(uri: str) -> str:
    """An ``s3://`` URI unchanged; a local path made absolute (Ray workers run elsewhere)."""
    return uri if "://" in uri else os.path.abspath(uri)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _region(bucket: str) -> str:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    if _endpoint():
        return "us-east-1"  # MinIO and friends accept any region; this is the SDKs' default
    try:
        return pafs.resolve_s3_region(bucket)
    except OSError:
        return "us-east-1"


@functools.lru_cache(maxsize=32)
def _s3_filesystem(bucket: str, endpoint: str | None) -> pafs.S3FileSystem:
    kwargs: dict = {
        "region": _region(bucket),
        "connect_timeout": _CONNECT_TIMEOUT_S,
        "request_timeout": _REQUEST_TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_MAX_ATTEMPTS),
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Map a URI to a pyarrow filesystem and the path inside it.

    Args:
        uri: local path (absolute or relative) or ``s3://bucket/key``.

    Returns:
        (filesystem, path) where path is absolute for local files and ``bucket/key`` for S3.
    """
    if is_s3(uri):
        path = uri[len("s3://") :].rstrip("/")
        return _s3_filesystem(path.split("/", 1)[0], _endpoint()), path
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"{uri}: unsupported scheme (use a local path or s3://bucket/prefix)")
    return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))


def _boto3_client():
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=_CONNECT_TIMEOUT_S,
        read_timeout=_REQUEST_TIMEOUT_S,
        retries={"max_attempts": _MAX_ATTEMPTS, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=_endpoint(), config=config)


def describe_error(err: BaseException) -> str:
    """One line saying why an S3 or file operation failed, without SDK noise or secrets."""
    text = str(err)
    code = ""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    checks = [
        (("NoSuchBucket", "NO_SUCH_BUCKET", "bucket does not exist"), "bucket does not exist"),
        (("InvalidAccessKeyId", "SignatureDoesNotMatch", "INVALID_ACCESS_KEY"), "bad credentials"),
        (("AccessDenied", "ACCESS_DENIED", "403", "Forbidden"), "access denied"),
        (
            ("NoCredentialsError", "Unable to locate credentials", "No credentials"),
            "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)",
        ),
        (
            ("NETWORK_CONNECTION", "curlCode", "Could not connect", "EndpointConnectionError"),
            f"endpoint unreachable ({_endpoint() or 'AWS S3'})",
        ),
        (("NoSuchKey", "404", "Not Found"), "not found"),
    ]
    haystack = f"{type(err).__name__} {code} {text}"
    for needles, cause in checks:
        if any(n in haystack for n in needles):
            return cause
    if isinstance(err, FileNotFoundError):
        return "not found"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, NotADirectoryError):
        return "a parent of this path is a file, not a directory"
    return text.splitlines()[0][:200] if text else type(err).__name__


def _check_bucket(uri: str) -> None:
    bucket = uri[len("s3://") :].split("/", 1)[0]
    if len(bucket) < 3:
        raise StorageError(f"{uri}: {bucket!r} is not a valid bucket name")
    try:
        _boto3_client().head_bucket(Bucket=bucket)
    except Exception as err:  # botocore raises many unrelated classes; all mean "cannot use"
        cause = describe_error(err)
        # HEAD answers carry no error body: a bare 404 here means the bucket is missing.
        raise StorageError(
            f"{uri}: {'bucket does not exist' if cause == 'not found' else cause}"
        ) from None


def _is_hidden(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith((".", "_"))


def _glob_regex(pattern: str) -> re.Pattern:
    """Shell-glob semantics: ``*`` and ``?`` stay within one path segment, ``**`` crosses them."""
    parts = re.split(r"(\*\*/?|\*|\?|\[[^\]]*\])", pattern)
    table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile(
        "".join(p if p.startswith("[") else table.get(p, re.escape(p)) for p in parts)
    )


def expand(uri: str) -> list[FileRef]:
    """Expand a file, directory (recursively) or glob into the files it names, sorted.

    Hidden files and those starting with ``_`` (markers such as ``_SUCCESS``) are skipped inside
    directories and globs.

    Raises:
        StorageError: when the location cannot be listed.
    """
    fs, path = filesystem(uri)
    prefix = "s3://" if is_s3(uri) else ""
    try:
        if any(c in path for c in _GLOB_CHARS):
            if not is_s3(uri):
                matches = sorted(glob.glob(path, recursive=True))
                infos = [i for i in fs.get_file_info(matches) if i.type == pafs.FileType.File]
            else:
                base = path[: min(path.find(c) for c in _GLOB_CHARS if c in path)]
                base = base.rsplit("/", 1)[0]
                listed = fs.get_file_info(
                    pafs.FileSelector(base, recursive=True, allow_not_found=True)
                )
                pattern = _glob_regex(path)
                infos = [i for i in listed if pattern.fullmatch(i.path)]
            infos = [i for i in infos if i.type == pafs.FileType.File and not _is_hidden(i.path)]
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                infos = [info]
            elif info.type == pafs.FileType.Directory:
                listed = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                infos = [
                    i
                    for i in listed
                    if i.type == pafs.FileType.File and not _is_hidden(i.path[len(path) :])
                ]
            else:
                infos = []
    except OSError as err:
        raise StorageError(f"{uri}: {describe_error(err)}") from None
    return sorted(
        (FileRef(prefix + i.path, i.size or 0, i.mtime_ns) for i in infos), key=lambda f: f.uri
    )


def check_inputs(uris: list[str]) -> list[FileRef]:
    """Expand every input URI; fail before any work if one names no readable file.

    Raises:
        StorageError: naming the URI that is missing, empty or unreachable.
    """
    files: list[FileRef] = []
    for uri in uris:
        if is_s3(uri):
            _check_bucket(uri)
        found = expand(uri)
        if not found:
            raise StorageError(f"{uri}: no such file, or no files match")
        files.extend(found)
    return files


def check_output(uri: str) -> None:
    """Make sure ``uri`` can be written, by writing and deleting a small probe object.

    Raises:
        StorageError: naming the URI and why it cannot be written.
    """
    if is_s3(uri):
        _check_bucket(uri)
    probe = join(uri, f"_write_probe_{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"")
        fs, path = filesystem(probe)
        fs.delete_file(path)
    except StorageError as err:
        raise StorageError(f"{uri}: {str(err).split(': ', 1)[1]}") from None
    except OSError as err:
        raise StorageError(f"{uri}: not writable: {describe_error(err)}") from None


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as err:
        raise StorageError(f"{uri}: {describe_error(err)}") from None


def open_input(uri: str, compression: str | None = "detect"):
    """Open a stream for reading; ``compression="detect"`` unpacks .gz/.bz2/.zst by extension."""
    fs, path = filesystem(uri)
    try:
        return fs.open_input_stream(path, compression=compression)
    except OSError as err:
        raise StorageError(f"{uri}: {describe_error(err)}") from None


def open_output(uri: str):
    """Open a stream for writing (creating parent directories of local paths)."""
    fs, path = filesystem(uri)
    try:
        if not is_s3(uri):
            fs.create_dir(os.path.dirname(path), recursive=True)
        return fs.open_output_stream(path)
    except OSError as err:
        raise StorageError(f"{uri}: not writable: {describe_error(err)}") from None


def read_bytes(uri: str) -> bytes:
    with open_input(uri, compression=None) as stream:
        return stream.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see either the old object or the whole new one.

    An S3 PUT is atomic by itself; a local file is written beside the target and renamed.
    """
    if is_s3(uri):
        with open_output(uri) as stream:
            stream.write(data)
        return
    _, path = filesystem(uri)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise StorageError(f"{uri}: not writable: {describe_error(err)}") from None


def delete(uri: str) -> None:
    """Delete one file or object; a missing one is fine."""
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise StorageError(f"{uri}: cannot delete: {describe_error(err)}") from None


def remove_tree(uri: str) -> None:
    """Delete everything under ``uri`` (a directory or prefix); a missing one is fine."""
    fs, path = filesystem(uri)
    try:
        if fs.get_file_info(path).type == pafs.FileType.Directory or is_s3(uri):
            fs.delete_dir_contents(path, missing_dir_ok=True)
    except OSError as err:
        raise StorageError(f"{uri}: cannot delete: {describe_error(err)}") from None
