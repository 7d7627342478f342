"""A lease on an output prefix: at most one translate run writes there at a time.

The lease is one small object, ``<output>/_lease.json`` (owner, acquired, expires). Creating it
is a conditional write (S3's ``If-None-Match: *`` on AWS S3 and MinIO; locally under an exclusive
``flock``), so of two runs starting together exactly one wins. The holder renews it every ``ttl/3``
(S3: ``If-Match`` its own ETag). A lease whose holder died expires; the next run takes it over
(S3: ``If-Match`` the stale ETag; local: read, check and write under an exclusive ``flock``), so
of several runs waiting exactly one gets it, and that run finishes what the dead one left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid

from s2s import storage

__all__ = ["Lease", "LeaseHeld", "LeaseLost", "LEASE_NAME"]

LEASE_NAME = "_lease.json"
log = logging.getLogger(__name__)


class LeaseHeld(Exception):
    """Another live run holds the lease; nothing was done."""


class LeaseLost(Exception):
    """This run's lease was taken over (it could not renew in time); it stops writing."""


def _precondition_failed(err: Exception) -> bool:
    code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class Lease:
    """``with Lease(uri, ttl_s):`` holds the lease for the block, renewing it in a thread."""

    def __init__(self, uri: str, ttl_s: float = 120.0) -> None:
        self.uri, self.ttl_s = uri, ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public ------------------------------------------------------------------------------

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease, or take over an expired one.

        Raises:
            LeaseHeld: when another run holds a lease that has not expired.
        """
        if storage.is_s3(self.uri):
            holder = self._acquire_s3()
        else:
            with self._local_lock():
                holder, _ = self._read()
                if holder and holder["expires"] > time.time():
                    raise LeaseHeld(self._held_message(holder))
                storage.write_bytes(self.uri, self._body())
        if holder:
            log.warning("took over the expired lease of %s", holder["owner"])
        self._thread = threading.Thread(target=self._renew_loop, daemon=True)
        self._thread.start()

    def _held_message(self, holder: dict) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(holder["acquired"]))
        return (
            f"another translate run ({holder['owner']}, since {since}) holds {self.uri} for "
            f"{holder['expires'] - time.time():.0f} s more; nothing done"
        )

    def _acquire_s3(self) -> dict | None:
        """Create the lease object, or replace an expired one; the holder replaced, if any."""
        if self._put(IfNoneMatch="*"):
            return None
        holder, etag = self._read()
        if holder and holder["expires"] > time.time():
            raise LeaseHeld(self._held_message(holder))
        if etag is None or not self._put(IfMatch=etag):  # another contender was faster
            raise LeaseHeld(f"another run took over the expired lease {self.uri} first")
        return holder

    def check(self) -> None:
        """Raises LeaseLost if renewing failed: another run may be writing now."""
        if self._lost.is_set():
            raise LeaseLost(f"{self.uri}: lease lost (not renewed within {self.ttl_s:.0f} s)")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        lock = contextlib.nullcontext() if storage.is_s3(self.uri) else self._local_lock()
        with lock:
            holder, _ = self._read()
            if holder and holder["owner"] == self.owner:
                self._delete()

    # -- storage -----------------------------------------------------------------------------

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {"owner": self.owner, "acquired": now, "expires": now + self.ttl_s}
        ).encode()

    @contextlib.contextmanager
    def _local_lock(self):
        """On a local filesystem, read-check-write under an exclusive flock of a sidecar file."""
        path = storage.filesystem(self.uri)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _s3(self):
        bucket, _, key = self.uri.removeprefix("s3://").partition("/")
        return storage._boto3_client(), bucket, key

    def _put(self, **condition) -> bool:
        """Conditional S3 write of our lease; False when the condition does not hold."""
        client, bucket, key = self._s3()
        try:
            self._etag = client.put_object(Bucket=bucket, Key=key, Body=self._body(), **condition)[
                "ETag"
            ]
            return True
        except Exception as err:
            if _precondition_failed(err):
                return False
            raise storage.StorageError(f"{self.uri}: {storage.describe_error(err)}") from None

    def _read(self) -> tuple[dict | None, str | None]:
        """(lease, ETag on S3) or (None, None) when there is none."""
        if storage.is_s3(self.uri):
            client, bucket, key = self._s3()
            try:
                reply = client.get_object(Bucket=bucket, Key=key)
            except Exception as err:
                if getattr(err, "response", {}).get("Error", {}).get("Code") == "NoSuchKey":
                    return None, None
                raise storage.StorageError(f"{self.uri}: {storage.describe_error(err)}") from None
            return json.loads(reply["Body"].read()), reply["ETag"]
        try:
            with open(storage.filesystem(self.uri)[1], "rb") as f:
                return json.loads(f.read()), None
        except (FileNotFoundError, json.JSONDecodeError):
            return None, None

    def _renew(self) -> bool:
        if storage.is_s3(self.uri):
            try:
                return self._put(IfMatch=self._etag)
            except storage.StorageError as err:  # a network blip: try again next time
                log.warning("%s: renewing failed (%s); retrying", self.uri, err)
                return True
        with self._local_lock():
            holder, _ = self._read()
            if not holder or holder["owner"] != self.owner:
                return False
            storage.write_bytes(self.uri, self._body())
            return True

    def _delete(self) -> None:
        if storage.is_s3(self.uri):
            client, bucket, key = self._s3()
            client.delete_object(Bucket=bucket, Key=key)
        else:
            os.remove(storage.filesystem(self.uri)[1])

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self._renew():
                log.error("%s: lease lost to another run", self.uri)
                self._lost.set()
                return
