"""Tokenized Parquet shards of a prepared corpus: write them, read them back.

Layout (contract, shared/DESIGN.md): ``train/``, ``valid/`` and ``test/`` under the corpus root,
each holding zstd Parquet files with ``src_ids``/``tgt_ids`` (list<int32>, no bos/eos) and
``src_len``/``tgt_len`` (int32); ``valid``/``test`` also keep the cleaned ``src``/``tgt`` text for
BLEU. The manifest lists the shards: a file not in it (left by a failed attempt) is not data.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2s import storage

__all__ = ["SPLITS", "ID_COLUMNS", "TEXT_COLUMNS", "write_shards", "read_shard"]

SPLITS = ("train", "valid", "test")  # a directory each; `split` columns hold the index into this
ID_COLUMNS = ("src_ids", "tgt_ids", "src_len", "tgt_len")
TEXT_COLUMNS = ("src", "tgt")


def write_shards(records: pa.Table, root: str) -> list[dict]:
    """Write the kept records of a batch as one shard per split present.

    Rows are ordered by their pair hash, a fixed pseudo-random order, so a shard is already
    shuffled. A shard's name is a digest of its content: a retried task rewrites the same file
    instead of adding a second copy.

    Args:
        records: tokenized records (see :func:`s2s.filters.tokenize_records`).
        root: corpus root URI.

    Returns:
        One ``{"split", "path", "rows", "bytes"}`` per shard written; ``path`` is relative.
    """
    kept = records.select([*ID_COLUMNS, *TEXT_COLUMNS, "split", "pair_hash"])
    if records["reason"].null_count < len(records):
        kept = kept.filter(records["reason"].is_null())
    split = kept["split"].to_numpy()
    pair_hash = kept["pair_hash"].to_numpy()
    written = []
    for index, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == index)
        if not len(rows):
            continue
        order = rows[np.argsort(pair_hash[rows], kind="stable")]
        columns = ID_COLUMNS if name == "train" else ID_COLUMNS + TEXT_COLUMNS
        part = kept.select(list(columns)).take(order)
        digest = hashlib.blake2b(pair_hash[order].tobytes(), digest_size=10)
        path = f"{name}/part-{digest.hexdigest()}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        storage.write_bytes(storage.join(root, path), data)
        written.append({"split": name, "path": path, "rows": len(part), "bytes": len(data)})
    return written


def read_shard(root: str, path: str, columns: list[str] | None = None) -> pa.Table:
    """Read one shard listed in a manifest (``path`` relative to the corpus ``root``)."""
    fs, full = storage.filesystem(storage.join(root, path))
    return pq.read_table(full, filesystem=fs, columns=columns)
