"""Bounded summaries of one pass over a corpus, mergeable across tasks.

A :class:`CorpusSketch` holds what prepare needs before it can tokenize, in memory that does not
grow with the corpus:

* a uniform random sample of distinct pairs for tokenizer training: the ``sample_size`` pairs with
  the smallest pair hashes (a bottom-k sample; the same pairs on every run and every cluster size);
* the ``key_count`` smallest distinct source-key hashes of training inputs, which turn
  ``valid_size=2000`` into an exact hash threshold;
* every source key of explicit valid/test inputs (small by nature), to keep them out of train.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CorpusSketch"]


def _empty() -> np.ndarray:
    return np.zeros(0, np.uint64)


@dataclass
class CorpusSketch:
    sample_size: int
    key_count: int
    clean_pairs: int = 0  # records that passed parsing and cleaning (duplicates included)
    sample_hash: np.ndarray = field(default_factory=_empty)  # (k,) uint64, sorted
    sample_src: list[str] = field(default_factory=list)
    sample_tgt: list[str] = field(default_factory=list)
    train_keys: np.ndarray = field(default_factory=_empty)  # (<= key_count,) uint64, sorted
    eval_keys: np.ndarray = field(default_factory=_empty)  # uint64, sorted, distinct
    dropped: Counter = field(default_factory=Counter)  # reason -> records (a few reasons)

    @staticmethod
    def of_records(records: pa.Table, roles: list[str], sample_size: int, key_count: int):
        """Sketch one batch of cleaned records (see :func:`s2s.filters.clean_records`)."""
        kept = records.filter(pc.is_null(records["reason"]))
        role = np.array(roles, dtype=object)[kept["input_id"].to_numpy()]
        is_train = role == "train"
        key_hash = kept["key_hash"].to_numpy()
        sketch = CorpusSketch(
            sample_size,
            key_count,
            clean_pairs=len(kept),
            train_keys=np.unique(key_hash[is_train])[:key_count],
            eval_keys=np.unique(key_hash[~is_train]),
            dropped=Counter(pc.drop_null(records["reason"]).to_pylist()),
        )
        hashes, first = np.unique(kept["pair_hash"].to_numpy(), return_index=True)
        take = first[:sample_size]
        sketch.sample_hash = hashes[:sample_size]
        sketch.sample_src = kept["src"].take(take).to_pylist()
        sketch.sample_tgt = kept["tgt"].take(take).to_pylist()
        return sketch

    def merge(self, other: CorpusSketch) -> None:
        self.clean_pairs += other.clean_pairs
        self.dropped += other.dropped
        self.train_keys = np.union1d(self.train_keys, other.train_keys)[: self.key_count]
        self.eval_keys = np.union1d(self.eval_keys, other.eval_keys)
        hashes = np.concatenate([self.sample_hash, other.sample_hash])
        hashes, first = np.unique(hashes, return_index=True)
        first = first[: self.sample_size]
        src = self.sample_src + other.sample_src
        tgt = self.sample_tgt + other.sample_tgt
        self.sample_hash = hashes[: self.sample_size]
        self.sample_src = [src[i] for i in first]
        self.sample_tgt = [tgt[i] for i in first]

    def sentences(self) -> list[str]:
        """Both sides of the sample, for training the joint vocabulary."""
        return self.sample_src + self.sample_tgt

    def to_table(self) -> pa.Table:
        """One-row table: how a Ray task hands its sketch to the driver."""
        return pa.table(
            {
                "sizes": [[self.sample_size, self.key_count, self.clean_pairs]],
                "sample_hash": [self.sample_hash],
                "sample_src": [self.sample_src],
                "sample_tgt": [self.sample_tgt],
                "train_keys": [self.train_keys],
                "eval_keys": [self.eval_keys],
                "dropped": [json.dumps(self.dropped)],
            },
            schema=pa.schema(
                [
                    ("sizes", pa.list_(pa.int64())),
                    ("sample_hash", pa.list_(pa.uint64())),
                    ("sample_src", pa.list_(pa.string())),
                    ("sample_tgt", pa.list_(pa.string())),
                    ("train_keys", pa.list_(pa.uint64())),
                    ("eval_keys", pa.list_(pa.uint64())),
                    ("dropped", pa.string()),
                ]
            ),
        )

    @staticmethod
    def from_row(row: dict) -> CorpusSketch:
        sample_size, key_count, clean_pairs = (int(v) for v in row["sizes"])
        return CorpusSketch(
            sample_size,
            key_count,
            clean_pairs,
            np.asarray(row["sample_hash"], np.uint64),
            list(row["sample_src"]),
            list(row["sample_tgt"]),
            np.asarray(row["train_keys"], np.uint64),
            np.asarray(row["eval_keys"], np.uint64),
            Counter(json.loads(row["dropped"])),
        )
