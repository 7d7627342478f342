"""The output lease, on a local directory and on the S3 endpoint: one holder at a time, expired
leases taken over by exactly one of several contenders, a released lease free again."""

import json
import threading
import time

import pytest

from s2s import storage
from s2s.lease import Lease, LeaseHeld


@pytest.fixture(params=["local", "s3"])
def lease_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out" / "_lease.json")
    return request.getfixturevalue("bucket") + "/out/_lease.json"


def test_one_holder_at_a_time(lease_uri):
    first = Lease(lease_uri, ttl_s=30)
    first.acquire()
    with pytest.raises(LeaseHeld, match="another translate run .* holds"):
        Lease(lease_uri, ttl_s=30).acquire()
    first.check()
    first.release()
    assert not storage.exists(lease_uri)
    with Lease(lease_uri, ttl_s=30):
        assert json.loads(storage.read_bytes(lease_uri))["expires"] > time.time()


def test_an_expired_lease_goes_to_exactly_one_contender(lease_uri):
    dead = {"owner": "deadhost:1:x", "acquired": time.time() - 100, "expires": time.time() - 1}
    storage.write_bytes(lease_uri, json.dumps(dead).encode())
    winners, losers = [], []

    def contend():
        lease = Lease(lease_uri, ttl_s=30)
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld:
            losers.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 5
    assert json.loads(storage.read_bytes(lease_uri))["owner"] == winners[0].owner
    winners[0].release()


def test_the_holder_keeps_renewing(lease_uri):
    with Lease(lease_uri, ttl_s=0.6) as lease:
        time.sleep(1.5)  # longer than the ttl: only renewal keeps others out
        with pytest.raises(LeaseHeld):
            Lease(lease_uri, ttl_s=0.6).acquire()
        lease.check()
