"""The order of training batches: a function of (seed, epoch) alone, whatever the number of workers.

Every worker computes the same epoch plan from the corpus' shard list::

    shards in a permuted order ─▶ windows of shards ─▶ rows permuted within a window
        ─▶ chunks of ``shuffle_buffer`` rows sorted by length ─▶ token-budget batches
        ─▶ one global sequence of batches for the epoch

An optimizer step takes the next ``batches_per_step`` batches of that sequence; worker ``r`` of
``W`` trains on the step's batches ``r, r + W, r + 2W, ...`` (at least one each, since
``W <= batches_per_step``). The loss of a step is normalised by the target tokens of all its
batches, so the gradient is the same sum whichever worker holds which batch. Hence:

* what a step trains on (tokens per step, the batches themselves) does not change when an
  elastic run shrinks or grows;
* the data position is ``(epoch, batches consumed)``: a resumed run continues at exactly the
  next batch, and its sequence of batches is the uninterrupted run's (:class:`DataDigest`
  checks it);
* the last ``< batches_per_step`` batches of an epoch are dropped (a partial step would leave a
  worker without a batch); they differ every epoch.

Every worker reads every shard of a window: with ``shuffle="global"`` the window is the whole
corpus (token ids only: ~100 bytes a pair, 20 MB for 200k pairs), loaded once and kept; with
``"buffer"`` a window is one shard (``shard_rows`` pairs), for corpora too large to hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from s2s.batching import Example, token_batches
from s2s.shards import read_shard

__all__ = ["EpochPlan", "DataDigest", "steps"]


@dataclass
class EpochPlan:
    """The batches of any epoch of a prepared corpus, the same on every worker.

    Args:
        data: corpus root URI.
        shards: the manifest's ``train`` shard entries (``path``, ``rows``).
        shuffle: ``global`` (one window: the whole corpus) or ``buffer`` (a window per shard).
        shuffle_buffer: rows sorted by length together before cutting batches.
        max_tokens: padded positions per batch.
        seed: the run's seed.
    """

    data: str
    shards: list[dict]
    shuffle: str
    shuffle_buffer: int
    max_tokens: int
    seed: int

    def __post_init__(self) -> None:
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # global: the corpus, once

    def batches(self, epoch: int) -> Iterator[list[Example]]:
        """The epoch's batches, in order; each a list of (source ids, target ids)."""
        # Seeded by (seed, epoch) alone: every worker, and a resumed run, draws the same plan.
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.shards))
        windows = [order] if self.shuffle == "global" else [[i] for i in order]
        for window_index, window in enumerate(windows):
            src, tgt = self._rows([self.shards[i] for i in window])
            rows = rng.permutation(len(src))
            examples = ((src[i], tgt[i]) for i in rows)
            seed = int(rng.integers(2**31)) + window_index
            yield from token_batches(examples, self.max_tokens, self.shuffle_buffer, seed=seed)

    def _rows(self, shards: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        key = ",".join(s["path"] for s in shards)
        if key in self._cache:
            return self._cache[key]
        tables = [read_shard(self.data, s["path"], ["src_ids", "tgt_ids"]) for s in shards]
        table = pa.concat_tables(tables)
        # Object arrays of int32 arrays: row i is one example, zero-copy views into the column.
        rows = tuple(
            table[c].combine_chunks().to_numpy(zero_copy_only=False) for c in ("src_ids", "tgt_ids")
        )
        if self.shuffle == "global":  # one window, read every epoch: keep it
            self._cache = {key: rows}
        return rows


def steps(
    batches: Iterator[list[Example]], per_step: int, skip: int = 0
) -> Iterator[list[list[Example]]]:
    """Group an epoch's batches into optimizer steps, after ``skip`` batches already trained.

    Args:
        batches: the epoch's global batch sequence (:meth:`EpochPlan.batches`).
        per_step: batches per optimizer step, over all workers.
        skip: batches of this epoch consumed before (the data position of a resumed run).

    Yields:
        The ``per_step`` batches of each full step; worker ``rank`` of ``world`` trains on
        ``step[rank::world]``. A last, partial step is dropped.
    """
    group: list[list[Example]] = []
    consumed = 0
    for batch in batches:
        group.append(batch)
        if len(group) < per_step:
            continue
        consumed += per_step
        # Steps trained before a resume are rebuilt (the sequence depends on them) but skipped.
        if consumed > skip:
            yield group
        group = []


class DataDigest:
    """A running fingerprint of every batch a run has trained on, in order: h = H(h, step's ids).

    Kept in the trainer state, so a resumed run continues the chain; two runs with the same
    digest at step N trained on the same batches in the same order (checked by the tests)."""

    def __init__(self, value: str = "") -> None:
        self.value = value

    def update(self, group: list[list[Example]]) -> None:
        h = hashlib.blake2b(self.value.encode(), digest_size=8)
        for batch in group:
            for src, tgt in batch:
                # Separators, so that moving ids between source and target or between examples
                # changes the digest.
                h.update(np.asarray(src, np.int32).tobytes())
                h.update(b"|")
                h.update(np.asarray(tgt, np.int32).tobytes())
                h.update(b";")
        self.value = h.hexdigest()
