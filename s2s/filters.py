"""Cleaning, filtering, split assignment and exact de-duplication of parallel records.

Every function here works on Arrow tables of records (see :mod:`s2s.corpus`) and never raises on
bad data: a record that must go gets a ``reason``, the first one that applies. Reasons are stable
names; the manifest counts them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s2s.placeholders import mask_pair
from s2s.tokenizer import Tokenizer

__all__ = [
    "SplitPlan",
    "normalize_text",
    "split_key",
    "stable_hash",
    "clean_records",
    "length_reasons",
    "dedup_groups",
    "mark_duplicates",
    "tokenize_records",
    "drop_records",
]

_ROLE_SPLIT = {"valid": 1, "test": 2}

# Control characters go (C0/C1 except whitespace, zero-width space, BOM, soft hyphen); zero-width
# joiners stay, since several scripts and emoji need them. Whitespace runs of any kind (tabs,
# newlines, no-break and thin spaces, line separators) become one ASCII space.
_CONTROL = r"[\x00-\x08\x0E-\x1F\x7F-\x84\x86-\x9F\x{200B}\x{FEFF}\x{00AD}]"
_WHITESPACE = r"[\s\v\x{85}\p{Z}]+"
# Anything the two rewrites below would change: a control character, whitespace other than a
# single ASCII space, or a space at either end.
_NEEDS_CLEANING = (
    r"[\x00-\x1F\x7F-\x9F\x{A0}\x{AD}\x{1680}\x{2000}-\x{200B}\x{2028}\x{2029}\x{202F}"
    r"\x{205F}\x{3000}\x{FEFF}]|  |^ | $"
)
_KEY_TRIM = " .,:;!?…\"'()[]{}<>«»„“”‘’-–—*_/\\|#%"
_UINT64 = 1 << 64


@dataclass(frozen=True)
class SplitPlan:
    """How records are assigned to train/valid/test.

    Records of a ``train``-role input go to test when the hash of their normalised source is
    below ``test_below``, to valid when below ``valid_below``, else to train: a source sentence
    therefore never lands in two splits. Records of explicit ``valid``/``test`` inputs keep their
    role, and training records whose source key is in ``eval_keys`` are dropped.
    """

    seed: str
    test_below: int = 0
    valid_below: int = 0
    eval_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    @staticmethod
    def from_fractions(seed: str, valid: float, test: float, eval_keys=None) -> SplitPlan:
        test_below = int(test * _UINT64)
        return SplitPlan(
            seed,
            test_below,
            min(_UINT64, test_below + int(valid * _UINT64)),
            np.sort(np.asarray(eval_keys if eval_keys is not None else [], np.uint64)),
        )


def normalize_text(texts: pa.Array) -> pa.Array:
    """NFC, control characters removed, whitespace runs collapsed to one space, ends trimmed."""
    texts = pc.utf8_normalize(texts, "NFC")
    # The regex rewrites are the costly part: run them only on the rows that need them.
    dirty = pc.fill_null(pc.match_substring_regex(texts, _NEEDS_CLEANING), False)
    if not pc.any(dirty).as_py():
        return texts
    rows = pc.filter(texts, dirty)
    rows = pc.replace_substring_regex(rows, _CONTROL, "")
    rows = pc.utf8_normalize(rows, "NFC")  # removing a control character can expose a pair
    rows = pc.utf8_trim_whitespace(pc.replace_substring_regex(rows, _WHITESPACE, " "))
    return pc.replace_with_mask(texts, dirty, rows)


def split_key(texts: pa.Array) -> pa.Array:
    """Lower case without surrounding punctuation: "Save File..." and "save file:" share a split."""
    keys = pc.utf8_trim(pc.utf8_lower(texts), _KEY_TRIM)
    return pc.if_else(pc.equal(keys, ""), texts, keys)


def stable_hash(texts: list[str], salt: str = "") -> np.ndarray:
    """64-bit BLAKE2b of each string (plus ``salt``), the same on every machine and run.

    Returns:
        (N,) uint64.
    """
    # Keyed BLAKE2b: a different seed gives an independent hash (and so another split).
    key = hashlib.blake2b(salt.encode(), digest_size=32).digest() if salt else b""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8, key=key).digest(), "little")
            for t in texts
        ),
        dtype=np.uint64,
        count=len(texts),
    )


def clean_records(records: pa.Table, plan: SplitPlan, roles: list[str]) -> pa.Table:
    """Normalise both sides, drop empty ones, hash, and assign each record its split.

    Args:
        records: ``src``, ``tgt``, ``input_id``, ``reason`` (see :data:`corpus.RECORD_SCHEMA`).
        plan: the split thresholds and explicit evaluation sources.
        roles: role of each read unit, indexed by ``input_id``.

    Returns:
        ``records`` with cleaned ``src``/``tgt`` and new columns ``pair_hash`` (uint64, identity
        of the pair for de-duplication), ``key_hash`` (uint64, of the source's split key) and
        ``split`` (int8 index into :data:`s2s.shards.SPLITS`); ``reason`` set for ``empty_source``,
        ``empty_target`` and ``overlaps_eval``.
    """
    src = normalize_text(records["src"].combine_chunks())
    tgt = normalize_text(records["tgt"].combine_chunks())
    reason = records["reason"].combine_chunks()
    reason = pc.if_else(
        pc.and_kleene(pc.is_null(reason), pc.equal(src, "")), "empty_source", reason
    )
    reason = pc.if_else(
        pc.and_kleene(pc.is_null(reason), pc.equal(tgt, "")), "empty_target", reason
    )

    ok = pc.is_null(reason).to_numpy(zero_copy_only=False)
    n = len(records)
    pair_hash = np.zeros(n, np.uint64)
    key_hash = np.zeros(n, np.uint64)
    if ok.any():
        idx = np.flatnonzero(ok)
        ok_src = src.take(idx)
        ok_tgt = tgt.take(idx)
        joined = pc.binary_join_element_wise(ok_src, ok_tgt, "\t").to_pylist()
        pair_hash[idx] = stable_hash(joined)
        key_hash[idx] = stable_hash(split_key(ok_src).to_pylist(), plan.seed)

    split = np.zeros(n, np.int8)
    split[key_hash < np.uint64(min(plan.valid_below, _UINT64 - 1))] = 1
    split[key_hash < np.uint64(min(plan.test_below, _UINT64 - 1))] = 2
    role = np.array([_ROLE_SPLIT.get(r, -1) for r in roles], np.int8)[
        records["input_id"].to_numpy()
    ]
    explicit = role >= 0
    split[explicit] = role[explicit]
    if len(plan.eval_keys):
        overlaps = ok & ~explicit & np.isin(key_hash, plan.eval_keys)
        reason = pc.if_else(pa.array(overlaps), "overlaps_eval", reason)
    return (
        records.set_column(0, "src", src)
        .set_column(1, "tgt", tgt)
        .set_column(records.schema.get_field_index("reason"), "reason", reason)
        .append_column("pair_hash", pa.array(pair_hash))
        .append_column("key_hash", pa.array(key_hash))
        .append_column("split", pa.array(split))
    )


def length_reasons(
    src_len: np.ndarray,
    tgt_len: np.ndarray,
    max_len: int,
    max_ratio: float,
    ratio_min_tokens: int,
) -> np.ndarray:
    """Length filter on token counts: ``too_long``, ``length_ratio`` or None per pair.

    Args:
        src_len, tgt_len: (N,) token counts without bos/eos.

    Returns:
        (N,) object array of reasons (None where the pair passes).
    """
    reasons = np.full(len(src_len), None, dtype=object)
    longer = np.maximum(src_len, tgt_len)
    shorter = np.maximum(np.minimum(src_len, tgt_len), 1)
    skewed = (longer >= ratio_min_tokens) & (longer > max_ratio * shorter)
    reasons[skewed] = "length_ratio"
    reasons[longer > max_len] = "too_long"
    return reasons


def tokenize_records(
    records: pa.Table,
    tokenizer: Tokenizer,
    max_len: int,
    max_ratio: float,
    ratio_min_tokens: int,
    target_tokenizer: Tokenizer | None = None,
    placeholders: re.Pattern | None = None,
) -> pa.Table:
    """Encode the kept records and apply the token-length filters.

    Args:
        records: cleaned records (see :func:`clean_records`).
        tokenizer: the corpus' SentencePiece model...
        target_tokenizer: ...and the targets', where they have their own (None: the same).
        placeholders: where given, the placeholders found on both sides of a pair are encoded
            as sentinels (:func:`s2s.placeholders.mask_pair`); the text columns keep them.

    Returns:
        ``records`` plus ``src_ids``/``tgt_ids`` (list<int32>, no bos/eos; empty for dropped
        records) and ``src_len``/``tgt_len`` (int32), with ``too_long``/``length_ratio`` reasons.
    """
    idx = np.flatnonzero(records["reason"].is_null().to_numpy(zero_copy_only=False))
    ok = records if len(idx) == len(records) else records.take(idx)
    src, tgt = ok["src"].to_pylist(), ok["tgt"].to_pylist()
    if placeholders is not None:
        pairs = [mask_pair(s, t, placeholders) for s, t in zip(src, tgt)]
        src, tgt = [s.text for s, _ in pairs], [t.text for _, t in pairs]
    src_ids, src_len = tokenizer.encode_arrow(src)
    tgt_ids, tgt_len = (target_tokenizer or tokenizer).encode_arrow(tgt)
    reason = np.array(records["reason"].to_pylist(), dtype=object)
    reason[idx] = length_reasons(src_len, tgt_len, max_len, max_ratio, ratio_min_tokens)
    if len(idx) < len(records):
        # Scatter the encoded rows back to their positions; dropped rows get empty lists.
        position = np.full(len(records), len(idx), np.int64)
        position[idx] = np.arange(len(idx))
        empty = pa.array([[]], pa.list_(pa.int32()))
        src_ids = pa.concat_arrays([src_ids, empty]).take(position)
        tgt_ids = pa.concat_arrays([tgt_ids, empty]).take(position)
        src_len = np.append(src_len, 0)[position]
        tgt_len = np.append(tgt_len, 0)[position]
    reason_column = records.schema.get_field_index("reason")
    return (
        records.set_column(reason_column, "reason", pa.array(reason, pa.string()))
        .append_column("src_ids", src_ids)
        .append_column("tgt_ids", tgt_ids)
        .append_column("src_len", pa.array(src_len, pa.int32()))
        .append_column("tgt_len", pa.array(tgt_len, pa.int32()))
    )


def dedup_groups(records: pa.Table, groups: int) -> pa.Table:
    """Add ``dedup_group``: which of ``groups`` hash partitions de-duplicates each record.

    Every copy of a pair has the same pair hash, hence the same group: the groups can be
    de-duplicated independently (:func:`mark_duplicates`), each in one call, and no duplicate can
    hide in another group. Records already dropped take no part; they are spread by line number
    so that bad input does not pile up in one group.

    Returns:
        ``records`` plus ``dedup_group`` (int64, in ``[0, groups)``).
    """
    kept = pc.is_null(records["reason"]).to_numpy(zero_copy_only=False)
    by_pair = records["pair_hash"].to_numpy() % np.uint64(groups)
    by_line = records["line"].to_numpy() % groups
    group = np.where(kept, by_pair.astype(np.int64), by_line)
    return records.append_column("dedup_group", pa.array(group, pa.int64()))


def mark_duplicates(records: pa.Table) -> pa.Table:
    """Set ``reason="duplicate"`` on each kept record whose pair an earlier kept record holds.

    "Earlier" is by input position ``(input_id, line)``, not by row order: the first occurrence of
    a pair in the inputs is kept whatever order the rows come in, so every run keeps the same
    copy. Exact for a whole corpus when ``records`` holds every kept record of each pair hash it
    contains, e.g. one group of :func:`dedup_groups`. A 64-bit hash collision (odds about
    N^2 / 2^65: 1 in 37 million for a million pairs) drops one pair as a duplicate.

    Args:
        records: cleaned records (see :func:`clean_records`) with ``input_id`` and ``line``.

    Returns:
        ``records`` with ``reason`` set to ``duplicate`` on every later copy of a kept pair.
    """
    idx = np.flatnonzero(pc.is_null(records["reason"]).to_numpy(zero_copy_only=False))
    if len(idx) < 2:
        return records
    pair_hash = records["pair_hash"].to_numpy()[idx]
    # Sort by pair, then by position: in each run of equal hashes the first row is the original.
    order = np.lexsort(
        (records["line"].to_numpy()[idx], records["input_id"].to_numpy()[idx], pair_hash)
    )
    ordered = pair_hash[order]
    later = np.zeros(len(idx), bool)
    later[1:] = ordered[1:] == ordered[:-1]
    if not later.any():
        return records
    is_duplicate = np.zeros(len(records), bool)
    is_duplicate[idx[order[later]]] = True
    reason = pc.if_else(pa.array(is_duplicate), "duplicate", records["reason"])
    return records.set_column(records.schema.get_field_index("reason"), "reason", reason)


def drop_records(records: pa.Table, reason: str) -> pa.Table:
    """``records`` with both sides null and ``reason`` set: what a record that a per-batch
    function fails on becomes (see :mod:`s2s.poison`); the functions here pass such rows through.
    """
    n = len(records)
    for name in ("src", "tgt"):
        records = records.set_column(
            records.schema.get_field_index(name), name, pa.nulls(n, pa.string())
        )
    index = records.schema.get_field_index("reason")
    return records.set_column(index, "reason", pa.array([reason] * n, pa.string()))
