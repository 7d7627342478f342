"""A lease on an output prefix: at most one translate run writes there at a time.

The lease is one small object, ``<output>/_lease.json`` (owner, acquired, expires). Creating it
is a conditional write (S3's ``If-None-Match: *`` on AWS S3 and MinIO; a local ``O_EXCL``
create), so of two runs starting together exactly one wins. The holder renews it every ``ttl/3``
(S3: ``If-Match`` its own ETag). A lease whose holder died expires; the next run takes it over
(S3: ``If-Match`` the stale ETag; local: an atomic rename of the stale file), so of several runs
waiting exactly one gets it, and that run finishes what the dead one left.
"""

from __future__ import annotations

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
        if not self._create():
            holder, etag = self._read()
            if holder and holder["expires"] > time.time():
                raise LeaseHeld(
                    f"another translate run ({holder['owner']}, since "
                    f"{time.strftime('%H:%M:%S', time.localtime(holder['acquired']))}) holds "
                    f"{self.uri} for {holder['expires'] - time.time():.0f} s more; nothing done"
                )
            if not self._take_over(etag):
                raise LeaseHeld(f"another run took over the expired lease {self.uri} first")
            log.warning("took over the expired lease of %s", holder["owner"] if holder else "?")
        self._thread = threading.Thread(target=self._renew_loop, daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raises LeaseLost if renewing failed: another run may be writing now."""
        if self._lost.is_set():
            raise LeaseLost(f"{self.uri}: lease lost (not renewed within {self.ttl_s:.0f} s)")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        holder, _ = self._read()
        if holder and holder["owner"] == self.owner:
            self._delete()

    # -- storage -----------------------------------------------------------------------------

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {"owner": self.owner, "acquired": now, "expires": now + self.ttl_s}
        ).encode()

    def _s3(self):
        bucket, _, key = self.uri.removeprefix("s3://").partition("/")
        return storage._boto3_client(), bucket, key

    def _create(self) -> bool:
        if storage.is_s3(self.uri):
            client, bucket, key = self._s3()
            try:
                self._etag = client.put_object(
                    Bucket=bucket, Key=key, Body=self._body(), IfNoneMatch="*"
                )["ETag"]
                return True
            except Exception as err:
                if _precondition_failed(err):
                    return False
                raise storage.StorageError(f"{self.uri}: {storage.describe_error(err)}") from None
        path = storage.filesystem(self.uri)[1]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._body())
        return True

    def _read(self) -> tuple[dict | None, str | None]:
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

    def _take_over(self, stale_etag: str | None) -> bool:
        if storage.is_s3(self.uri):
            client, bucket, key = self._s3()
            try:
                self._etag = client.put_object(
                    Bucket=bucket, Key=key, Body=self._body(), IfMatch=stale_etag
                )["ETag"]
                return True
            except Exception as err:
                if _precondition_failed(err) or stale_etag is None:
                    return False
                raise storage.StorageError(f"{self.uri}: {storage.describe_error(err)}") from None
        path = storage.filesystem(self.uri)[1]
        moved = f"{path}.expired-{uuid.uuid4().hex[:8]}"
        try:  # only one of several runs can move the stale file away
            os.rename(path, moved)
        except FileNotFoundError:
            return False
        os.remove(moved)
        return self._create()

    def _renew(self) -> bool:
        if storage.is_s3(self.uri):
            client, bucket, key = self._s3()
            try:
                self._etag = client.put_object(
                    Bucket=bucket, Key=key, Body=self._body(), IfMatch=self._etag
                )["ETag"]
                return True
            except Exception as err:
                if _precondition_failed(err):
                    return False
                log.warning("%s: renewing failed (%s); retrying", self.uri, err)
                return True
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
