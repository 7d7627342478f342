"""The hand-off from prepare to train: ``manifest.json`` and the counts behind it.

:class:`PrepareStats` accumulates, batch by batch, where every input record went: kept in a
split, or dropped for a reason (with a few ``file:line`` samples per reason), plus token-length
histograms and the shards written. Partial stats merge, so each Ray task reports its own and the
driver adds them up.

A corpus is complete or visibly not. The manifest is its completion mark: a prepare writes a
marker (``_prepare_started.json``) and removes the old manifest before it touches any shard
(:func:`begin_prepare`), and writes the manifest last, atomically (:func:`finish_prepare`).
:func:`corpus_state` tells a complete corpus from what a failed or killed prepare left, which the
next prepare replaces without ``--overwrite``, and from a directory of unrelated files, which it
refuses. One prepare at a time writes an output (:func:`prepare_lease`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s2s import storage
from s2s.lease import LEASE_NAME, Lease, LeaseHeld
from s2s.shards import SPLITS
from s2s.tokenizer import SPECIAL_IDS, TARGET_TOKENIZER_FILE, TOKENIZER_FILE

__all__ = [
    "FORMAT_VERSION",
    "PrepareStats",
    "write_manifest",
    "read_manifest",
    "ManifestError",
    "PREPARE_MARKER",
    "CorpusState",
    "corpus_state",
    "begin_prepare",
    "finish_prepare",
    "prepare_lease",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SAMPLES_PER_REASON = 5
# Written before a prepare's first shard, removed after its manifest: an output that holds it and
# no manifest is a prepare that did not finish. The leading "_" keeps it out of listings of data.
PREPARE_MARKER = "_prepare_started.json"
# The files a prepare writes, relative to its output: shards, the tokenizer, the manifest, and what
# a killed atomic write of one of them leaves behind (storage.write_bytes: "<name>.tmp-<8 hex>").
_PREPARE_FILE = re.compile(
    rf"(?:(?:{'|'.join(SPLITS)})/part-[0-9a-f]+\.parquet|{re.escape(TOKENIZER_FILE)}|"
    rf"{re.escape(TARGET_TOKENIZER_FILE)}|{re.escape(MANIFEST_NAME)})"
    r"(?:\.tmp-[0-9a-f]{8})?"
)

CorpusState = Literal["empty", "complete", "incomplete", "foreign"]


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


def corpus_state(root: str) -> CorpusState:
    """What a prepare's output ``root`` holds.

    Returns:
        ``"complete"``: a manifest and every file it lists; ``"incomplete"``: what a prepare that
        failed or was killed left (its marker, or only files a prepare writes, or a manifest whose
        files are gone); ``"empty"``: nothing; ``"foreign"``: files no prepare wrote, no marker.
    """
    names = set(_files(root))
    if MANIFEST_NAME in names and _lists_only(root, names):
        return "complete"
    started = storage.exists(storage.join(root, PREPARE_MARKER))
    if not names and not started:
        return "empty"
    if started or all(_PREPARE_FILE.fullmatch(name) for name in names):
        return "incomplete"
    return "foreign"


def _lists_only(root: str, names: set[str]) -> bool:
    """Whether every file the manifest under ``root`` lists is in ``names`` (False for a manifest
    that cannot be read)."""
    try:
        manifest = json.loads(storage.read_bytes(storage.join(root, MANIFEST_NAME)))
        tokenizer = manifest["tokenizer"]
        listed = [
            tokenizer["file"],
            *([tokenizer["target_file"]] if "target_file" in tokenizer else []),
        ]
        listed += [shard["path"] for shards in manifest["shards"].values() for shard in shards]
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return all(path in names for path in listed)


def begin_prepare(root: str, about: dict) -> None:
    """Make ``root`` visibly incomplete, then clear what an earlier prepare left there.

    In this order, so that no moment shows a complete-looking corpus that is not one: the marker
    (``about``: who started when), then the manifest removed, then the shards and the leftovers of
    interrupted writes. Nothing a prepare does not write is removed.
    """
    storage.write_bytes(storage.join(root, PREPARE_MARKER), json.dumps(about).encode())
    storage.delete(storage.join(root, MANIFEST_NAME))
    for split in SPLITS:
        storage.remove_tree(storage.join(root, split))
    for name, uri in _files(root).items():
        if ".tmp-" in name and _PREPARE_FILE.fullmatch(name):
            storage.delete(uri)


def finish_prepare(root: str, manifest: dict) -> str:
    """Write the manifest, atomically and last: from then on the corpus is complete. Then remove
    the marker (a run killed in between leaves both: the manifest wins). Returns its URI."""
    uri = write_manifest(root, manifest)
    storage.delete(storage.join(root, PREPARE_MARKER))
    return uri


@contextlib.contextmanager
def prepare_lease(root: str) -> Iterator[Lease]:
    """Hold the output's single-writer lease (see :mod:`s2s.lease`) for the block: a second
    prepare on the same output would otherwise clear the first one's shards as incomplete.

    Raises:
        LeaseHeld: another prepare holds it; nothing was done.
    """
    lease = Lease(storage.join(root, LEASE_NAME))
    try:
        lease.acquire()
    except LeaseHeld:
        raise LeaseHeld(
            f"another prepare is writing {root}; nothing done (the lease of a run that died "
            f"expires within {lease.ttl_s:.0f} s)"
        ) from None
    try:
        yield lease
    finally:
        lease.release()


def _files(root: str) -> dict[str, str]:
    """Path relative to ``root`` -> URI, of every file under it (``_`` and hidden ones left out)."""
    base = storage.filesystem(root)[1].rstrip("/") + "/"
    return {
        ref.uri.removeprefix("s3://").removeprefix(base): ref.uri for ref in storage.expand(root)
    }
