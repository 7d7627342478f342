"""The training data order (s2s.sampler), without Ray: a function of (seed, epoch) alone, the same
steps whatever the number of workers, and a resume that continues at exactly the next batch."""

import numpy as np
import pyarrow as pa
import pytest

from s2s.sampler import DataDigest, EpochPlan, steps
from s2s.shards import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Four real shard files of random-length examples (ids only, as prepare writes them)."""
    root = str(tmp_path_factory.mktemp("corpus"))
    rng = np.random.default_rng(0)
    entries = []
    for part in range(4):
        n = 300 + 50 * part
        src = [rng.integers(4, 500, rng.integers(1, 30)).tolist() for _ in range(n)]
        tgt = [rng.integers(4, 500, rng.integers(1, 30)).tolist() for _ in range(n)]
        table = pa.table({
            "src_ids": pa.array(src, pa.list_(pa.int32())),
            "tgt_ids": pa.array(tgt, pa.list_(pa.int32())),
            "src_len": pa.array([len(s) for s in src], pa.int32()),
            "tgt_len": pa.array([len(t) for t in tgt], pa.int32()),
            "src": [""] * n, "tgt": [""] * n, "split": [0] * n,
            "pair_hash": pa.array(rng.integers(0, 2**62, n, dtype=np.int64) + part),
            "reason": pa.nulls(n, pa.string()),
        })  # fmt: skip
        entries += write_shards(table, root)
    return root, entries


def plan(shards, shuffle="global", seed=1):
    root, entries = shards
    return EpochPlan(root, entries, shuffle, shuffle_buffer=200, max_tokens=300, seed=seed)


def fingerprints(batches) -> list[tuple]:
    return [tuple((tuple(s), tuple(t)) for s, t in b) for b in batches]


@pytest.mark.parametrize("shuffle", ["global", "buffer"])
def test_each_epoch_is_a_permutation_of_the_corpus_fixed_by_seed_and_epoch(shards, shuffle):
    epoch0 = fingerprints(plan(shards, shuffle).batches(0))
    assert epoch0 == fingerprints(plan(shards, shuffle).batches(0))  # a fresh plan, same order
    assert epoch0 != fingerprints(plan(shards, shuffle).batches(1))
    assert epoch0 != fingerprints(plan(shards, shuffle, seed=2).batches(0))
    rows = sorted(example for batch in epoch0 for example in batch)
    total = sum(s["rows"] for s in shards[1])
    assert len(rows) == total  # every example exactly once per epoch
    assert rows == sorted(e for b in fingerprints(plan(shards, shuffle).batches(1)) for e in b)
    for batch in epoch0:  # the token budget holds (padded positions, +1 for eos/bos)
        width = max(max(len(s), len(t)) + 1 for s, t in batch)
        assert width * len(batch) <= 300 or len(batch) == 1


def test_a_step_trains_on_the_same_batches_whatever_the_number_of_workers(shards):
    groups = list(steps(plan(shards).batches(0), per_step=4))
    assert groups and all(len(g) == 4 for g in groups)
    for world in (1, 2, 3, 4):
        for group in groups:
            shares = [group[rank::world] for rank in range(world)]
            assert all(shares)  # every worker has at least one batch
            assert sorted(b for share in shares for b in fingerprints(share)) == sorted(
                fingerprints(group)
            )


def test_resume_continues_at_exactly_the_next_batch(shards):
    full = list(steps(plan(shards).batches(3), per_step=2))
    resumed = list(steps(plan(shards).batches(3), per_step=2, skip=2 * 5))
    assert [fingerprints(g) for g in resumed] == [fingerprints(g) for g in full[5:]]
    uninterrupted, first, second = DataDigest(), DataDigest(), None
    for group in full:
        uninterrupted.update(group)
    for group in full[:5]:
        first.update(group)
    second = DataDigest(first.value)  # what a checkpoint carries over
    for group in resumed:
        second.update(group)
    assert second.value == uninterrupted.value
    assert DataDigest().value != uninterrupted.value


def test_a_partial_last_step_is_dropped(shards):
    batches = list(plan(shards).batches(0))
    groups = list(steps(iter(batches), per_step=7))
    assert len(groups) == len(batches) // 7
