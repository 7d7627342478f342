"""The output lease, on a local directory and on the S3 endpoint: one holder at a time, expired
leases taken over by exactly one of several contenders, a released lease free again, a holder
that lost its lease told so.

Expiry is judged on the lease module's clock; tests that need a lease to expire (or not) move
that clock instead of sleeping, so a busy machine cannot make a lease expire early or late."""

import json
import threading
import time

import pytest

from s2s import storage
from s2s.lease import Lease, LeaseHeld, LeaseLost

DEAD = "deadhost:1:x"


class LeaseClock:
    """Stands in for the ``time`` module in s2s.lease: real time plus ``shift``, or a fixed
    instant once frozen. Only expiry reads it; renewal still runs every ttl/3 real seconds."""

    def __init__(self) -> None:
        self.shift = 0.0
        self.frozen: float | None = None

    def time(self) -> float:
        return self.frozen if self.frozen is not None else time.time() + self.shift

    def __getattr__(self, name: str):  # strftime, localtime: the real ones
        return getattr(time, name)


@pytest.fixture
def lease_clock(monkeypatch) -> LeaseClock:
    clock = LeaseClock()
    monkeypatch.setattr("s2s.lease.time", clock)
    return clock


@pytest.fixture(params=["local", "s3"])
def lease_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out" / "_lease.json")
    return request.getfixturevalue("bucket") + "/out/_lease.json"


def read_lease(uri: str) -> dict:
    return json.loads(storage.read_bytes(uri))


def wait_for(condition, what: str, timeout: float = 30.0):
    """Polls ``condition`` (real time): generous, as a busy machine may run threads late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_one_holder_at_a_time(lease_uri):
    first = Lease(lease_uri, ttl_s=30)
    first.acquire()
    with pytest.raises(LeaseHeld, match="another translate run .* holds"):
        Lease(lease_uri, ttl_s=30).acquire()
    first.check()
    first.release()
    assert not storage.exists(lease_uri)
    with Lease(lease_uri, ttl_s=30):
        assert read_lease(lease_uri)["expires"] > time.time()


def test_an_expired_lease_goes_to_exactly_one_contender(lease_uri, monkeypatch):
    dead = {"owner": DEAD, "acquired": time.time() - 100, "expires": time.time() - 1}
    storage.write_bytes(lease_uri, json.dumps(dead).encode())
    contenders = 6
    # Started one after another, each contender would find the lease its predecessor had just
    # taken, and the race this test is about would never run. So every contender is made to
    # read the expired lease before any of them writes:
    real_read, real_put = Lease._read, Lease._put
    s3 = storage.is_s3(lease_uri)
    all_read = threading.Barrier(contenders, timeout=60)
    put_one_at_a_time = threading.Lock()

    def read_then_linger(self):
        holder, etag = real_read(self)
        if holder and holder["owner"] == DEAD:
            if s3:  # all six hold the stale ETag before anyone replaces the lease
                all_read.wait()
            else:  # read-check-write runs under a flock: without it, all six would read here
                time.sleep(0.2)
        return holder, etag

    def atomic_put(self, **condition):
        # S3 applies a conditional write atomically; moto checks, then writes, unlocked.
        with put_one_at_a_time:
            return real_put(self, **condition)

    monkeypatch.setattr(Lease, "_read", read_then_linger)
    monkeypatch.setattr(Lease, "_put", atomic_put)
    winners, losers = [], []
    start = threading.Barrier(contenders, timeout=60)

    def contend():
        lease = Lease(lease_uri, ttl_s=30)
        start.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld as err:
            losers.append(str(err))

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == contenders - 1, losers
    if s3:  # each loser saw the expired lease and lost the conditional replace, not a check
        assert all("took over the expired lease" in why for why in losers), losers
    else:  # each loser read the lease only after the winner had written it
        assert all("holds" in why for why in losers), losers
    assert read_lease(lease_uri)["owner"] == winners[0].owner
    winners[0].release()
    assert not storage.exists(lease_uri)


def test_the_holder_keeps_renewing(lease_uri, lease_clock):
    lease_clock.frozen = time.time()
    with Lease(lease_uri, ttl_s=0.6) as lease:  # renewed every 0.2 s (real time)
        assert read_lease(lease_uri)["expires"] == pytest.approx(
            lease_clock.frozen + 0.6, abs=1e-3
        )  # abs: the default, relative, is half an hour here
        lease_clock.frozen += 60  # long past the expiry it was taken with
        # Only a renewal after the clock moved (the clock stands still) keeps others out.
        wait_for(lambda: read_lease(lease_uri)["expires"] > lease_clock.frozen, "a renewal")
        with pytest.raises(LeaseHeld):
            Lease(lease_uri, ttl_s=0.6).acquire()
        lease.check()
        assert read_lease(lease_uri)["owner"] == lease.owner
    assert not storage.exists(lease_uri)


def test_a_lease_not_renewed_expires_after_its_ttl_and_is_taken_over(lease_uri, lease_clock):
    """What lets a run finish what a dead one left: nobody renews its lease any more."""
    lease_clock.frozen = time.time()
    dead = Lease(lease_uri, ttl_s=300)
    dead.acquire()  # its first renewal is 100 s (real) away: within this test it never renews
    try:
        with pytest.raises(LeaseHeld, match=r"holds .* for 300 s more"):
            Lease(lease_uri, ttl_s=300).acquire()
        lease_clock.frozen += 299.9  # not yet
        with pytest.raises(LeaseHeld, match=r"for 0 s more"):
            Lease(lease_uri, ttl_s=300).acquire()
        lease_clock.frozen += 0.2  # now past it
        with Lease(lease_uri, ttl_s=300) as lease:
            assert read_lease(lease_uri)["owner"] == lease.owner
            dead.release()  # stops its renewal; the lease is no longer its own to delete
            assert read_lease(lease_uri)["owner"] == lease.owner
    finally:
        dead.release()


def test_a_holder_whose_lease_was_taken_over_is_told_and_leaves_it(lease_uri, monkeypatch):
    real_renew = Lease._renew
    may_renew = threading.Event()

    def renew_when_allowed(self):
        # The test decides when renewals run: none can be half done while the lease is replaced.
        may_renew.wait(60)
        return real_renew(self)

    monkeypatch.setattr(Lease, "_renew", renew_when_allowed)
    lease = Lease(lease_uri, ttl_s=0.6)
    with lease:
        other = {"owner": "otherhost:2:y", "acquired": time.time(), "expires": time.time() + 60}
        storage.write_bytes(lease_uri, json.dumps(other).encode())  # as a run taking it over
        lease.check()  # not renewed since: nothing known yet
        may_renew.set()

        def lost() -> bool:
            try:
                lease.check()
            except LeaseLost:
                return True
            return False

        wait_for(lost, "the holder to notice it lost the lease")
    # Leaving the block released nothing: the lease is the other run's.
    assert read_lease(lease_uri)["owner"] == "otherhost:2:y"
