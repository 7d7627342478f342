"""The hand-off from prepare to train: ``manifest.json`` and the counts behind it.

:class:`PrepareStats` accumulates, batch by batch, where every input record went: kept in a
split, or dropped for a reason (with a few ``file:line`` samples per reason), plus token-length
histograms and the shards written. Partial stats merge, so each Ray task reports its own and the
driver adds them up. The manifest is written last: its presence marks a complete corpus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s2s import storage
from s2s.filters import SPLITS
from s2s.tokenizer import SPECIAL_IDS

__all__ = ["FORMAT_VERSION", "PrepareStats", "write_manifest", "read_manifest", "ManifestError"]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SAMPLES_PER_REASON = 5


class ManifestError(ValueError):
    """A corpus' manifest is missing, of another format version, or inconsistent."""


@dataclass
class PrepareStats:
    """Where the records of (part of) a prepare run went. All fields merge by addition."""

    read: int = 0
    kept: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    dropped: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    # Token-length histograms of kept pairs: {split: {"src": [count per length], "tgt": [...]}}
    lengths: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    shards: list[dict] = field(default_factory=list)

    @staticmethod
    def from_records(records: pa.Table, unit_names: list[str], shards: list[dict]) -> PrepareStats:
        """Count a batch of tokenized records (see :func:`s2s.filters.tokenize_records`)."""
        stats = PrepareStats(read=len(records), shards=shards)
        reason = records["reason"]
        kept = pc.is_null(reason).to_numpy(zero_copy_only=False)
        split = records["split"].to_numpy()
        for index, name in enumerate(SPLITS):
            rows = kept & (split == index)
            stats.kept[name] = int(rows.sum())
            if rows.any():
                stats.lengths[name] = {
                    side: np.bincount(records[f"{side}_len"].to_numpy()[rows]).tolist()
                    for side in ("src", "tgt")
                }
        dropped = records.filter(pc.invert(pc.is_null(reason)))
        if len(dropped):
            for row in dropped.group_by("reason").aggregate([("line", "count")]).to_pylist():
                stats.dropped[row["reason"]] = row["line_count"]
            for name in stats.dropped:
                where = dropped.filter(pc.equal(dropped["reason"], name)).slice(
                    0, SAMPLES_PER_REASON
                )
                stats.samples[name] = [
                    f"{unit_names[i]}:{line}"
                    for i, line in zip(where["input_id"].to_pylist(), where["line"].to_pylist())
                ]
        return stats

    def merge(self, other: PrepareStats) -> None:
        self.read += other.read
        for name, n in other.kept.items():
            self.kept[name] = self.kept.get(name, 0) + n
        for name, n in other.dropped.items():
            self.dropped[name] = self.dropped.get(name, 0) + n
        for name, where in other.samples.items():
            mine = self.samples.setdefault(name, [])
            mine.extend(where[: SAMPLES_PER_REASON - len(mine)])
        for split, sides in other.lengths.items():
            mine = self.lengths.setdefault(split, {})
            for side, hist in sides.items():
                mine[side] = _add_histograms(mine.get(side, []), hist)
        self.shards.extend(other.shards)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @staticmethod
    def from_json(text: str) -> PrepareStats:
        return PrepareStats(**json.loads(text))

    def length_summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per split and side: tokens, mean, p50, p95, p99 and max length of kept pairs."""
        return {
            split: {side: _summarize(np.asarray(hist)) for side, hist in sides.items()}
            for split, sides in self.lengths.items()
        }

    def counts(self) -> dict:
        """The manifest's ``counts`` block; ``read == sum(kept) + sum(dropped)`` holds."""
        return {
            "read": self.read,
            "kept": dict(self.kept),
            "dropped": dict(sorted(self.dropped.items())),
        }


def _add_histograms(a: list[int], b: list[int]) -> list[int]:
    out = np.zeros(max(len(a), len(b)), np.int64)
    out[: len(a)] += np.asarray(a, np.int64)
    out[: len(b)] += np.asarray(b, np.int64)
    return out.tolist()


def _summarize(hist: np.ndarray) -> dict[str, float]:
    total = int(hist.sum())
    if not total:
        return {"pairs": 0}
    lengths = np.arange(len(hist))
    cdf = np.cumsum(hist) / total
    return {
        "tokens": int((hist * lengths).sum()),
        "mean": round(float((hist * lengths).sum() / total), 2),
        "p50": int(np.searchsorted(cdf, 0.50)),
        "p95": int(np.searchsorted(cdf, 0.95)),
        "p99": int(np.searchsorted(cdf, 0.99)),
        "max": int(np.flatnonzero(hist)[-1]),
    }


def write_manifest(root: str, manifest: dict) -> str:
    """Write ``manifest.json`` atomically under ``root``; return its URI."""
    uri = storage.join(root, MANIFEST_NAME)
    storage.write_bytes(uri, (json.dumps(manifest, indent=2) + "\n").encode())
    return uri


def read_manifest(root: str) -> dict:
    """Read and check the manifest of a prepared corpus.

    Raises:
        ManifestError: if it is missing (the corpus is incomplete), of an unknown format
            version, uses other special ids, or its counts do not reconcile.
    """
    uri = storage.join(root, MANIFEST_NAME)
    if not storage.exists(uri):
        raise ManifestError(f"{uri}: missing; is {root} a completely prepared corpus?")
    manifest = json.loads(storage.read_bytes(uri))
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{uri}: format_version {version}, this s2s reads {FORMAT_VERSION}")
    if manifest.get("special_ids") != SPECIAL_IDS:
        raise ManifestError(f"{uri}: special ids {manifest.get('special_ids')} != {SPECIAL_IDS}")
    counts = manifest["counts"]
    accounted = sum(counts["kept"].values()) + sum(counts["dropped"].values())
    if counts["read"] != accounted:
        raise ManifestError(f"{uri}: read {counts['read']} != kept + dropped {accounted}")
    return manifest
