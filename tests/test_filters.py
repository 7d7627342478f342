import numpy as np
import pyarrow as pa
import pytest

from s2s.corpus import RECORD_SCHEMA
from s2s.filters import (
    SplitPlan,
    clean_records,
    dedup_groups,
    length_reasons,
    mark_duplicates,
    normalize_text,
    stable_hash,
)
from s2s.shards import SPLITS


def make_records(pairs, input_ids=None, reasons=None) -> pa.Table:
    n = len(pairs)
    return pa.table(
        {
            "src": [p[0] for p in pairs],
            "tgt": [p[1] for p in pairs],
            "input_id": input_ids or [0] * n,
            "line": list(range(1, n + 1)),
            "reason": reasons or [None] * n,
        },
        schema=RECORD_SCHEMA,
    )


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Cafe\u0301", "Café"),  # NFC
        ("  a\t\tb \n c  ", "a b c"),
        ("no\u00a0break\u2009thin\u3000ideographic", "no break thin ideographic"),
        ("bell\x07 and\x00 null", "bell and null"),
        ("zero\u200bwidth\ufeff soft\u00adhyphen", "zerowidth softhyphen"),
        (
            "emoji \U0001f469\u200d\U0001f4bb keeps its joiner",
            "emoji \U0001f469\u200d\U0001f4bb keeps its joiner",
        ),
    ],
)
def test_normalize_text(raw, clean):
    assert normalize_text(pa.array([raw])).to_pylist() == [clean]


def test_clean_records_reasons_hashes_splits():
    pairs = [
        ("Hello", "Hallo"),
        (" \x07 ", "x"),
        ("y", "\u200b"),
        ("Hello ", " Hallo"),
        (None, None),
    ]
    table = clean_records(
        make_records(pairs, reasons=[None, None, None, None, "missing_tab"]),
        SplitPlan(seed="s"),
        ["train"],
    )
    assert table["reason"].to_pylist() == [
        None,
        "empty_source",
        "empty_target",
        None,
        "missing_tab",
    ]
    hashes = table["pair_hash"].to_pylist()
    assert hashes[0] == hashes[3] != 0  # same pair after cleaning -> same identity
    assert table["src"][3].as_py() == "Hello"


def test_hash_split_is_deterministic_leak_free_and_sized():
    sources = [f"Sentence number {i}" for i in range(20000)]
    # Variants that differ only in case and punctuation share a split key.
    variants = [s.upper() + "..." for s in sources[:2000]]
    records = make_records([(s, "t") for s in sources + variants])
    plan = SplitPlan.from_fractions("seed-1", valid=0.1, test=0.05)
    split = clean_records(records, plan, ["train"])["split"].to_numpy()
    again = clean_records(records, plan, ["train"])["split"].to_numpy()
    assert (split == again).all()
    assert (split[:2000] == split[20000:]).all()
    share = np.bincount(split[:20000], minlength=3) / 20000
    assert share == pytest.approx([0.85, 0.10, 0.05], abs=0.01)
    other = clean_records(records, SplitPlan.from_fractions("seed-2", 0.1, 0.05), ["train"])
    assert (other["split"].to_numpy() != split).mean() > 0.1  # the seed matters


def test_explicit_eval_roles_and_overlap():
    records = make_records(
        [("Open", "Öffnen"), ("Open!", "Auf"), ("Close", "Zu")], input_ids=[0, 1, 1]
    )
    probe = clean_records(records, SplitPlan("s"), ["test", "train"])
    eval_keys = probe["key_hash"].to_numpy()[:1]
    table = clean_records(records, SplitPlan("s", eval_keys=eval_keys), ["test", "train"])
    assert [SPLITS[i] for i in table["split"].to_pylist()] == ["test", "train", "train"]
    assert table["reason"].to_pylist() == [None, "overlaps_eval", None]  # "Open!" ~ "Open"


def test_stable_hash_is_stable():
    assert stable_hash(["abc"])[0] == stable_hash(["abc"])[0]
    assert stable_hash(["abc"], "x")[0] != stable_hash(["abc"], "y")[0]
    assert stable_hash(["abc"]).dtype == np.uint64


def corpus_with_duplicates(seed: int, units: int = 4, lines: int = 300) -> pa.Table:
    """Cleaned records of several inputs drawing from 150 pairs: most pairs repeat, within and
    across inputs; some lines are already dropped (an unparsable line; a training copy that
    overlaps an evaluation source, which keeps its pair hash)."""
    rng = np.random.default_rng(seed)
    tables = []
    for unit in range(units):
        picks = rng.integers(0, 150, lines)
        pairs = [(f"source {i}", f"Ziel {i}") for i in picks]
        reasons = [None] * lines
        for row in rng.choice(lines, 20, replace=False):
            reasons[row] = "missing_tab"
            pairs[row] = (None, None)
        records = make_records(pairs, input_ids=[unit] * lines, reasons=reasons)
        tables.append(clean_records(records, SplitPlan("s"), ["train"] * units))
    table = pa.concat_tables(tables)
    overlaps = rng.choice(len(table), 30, replace=False)
    reason = table["reason"].to_pylist()
    for row in overlaps.tolist():
        reason[row] = reason[row] or "overlaps_eval"
    return table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reason))


def first_positions(table: pa.Table) -> set[tuple[int, int]]:
    """Reference: the (input_id, line) of the first kept copy of each pair, by position."""
    first = {}
    for row in sorted(table.to_pylist(), key=lambda r: (r["input_id"], r["line"])):
        if row["reason"] is None:
            first.setdefault((row["src"], row["tgt"]), (row["input_id"], row["line"]))
    return set(first.values())


def reasons_by_position(table: pa.Table) -> dict[tuple[int, int], str | None]:
    return {(r["input_id"], r["line"]): r["reason"] for r in table.to_pylist()}


def test_mark_duplicates_keeps_the_first_copy_by_position_whatever_the_row_order():
    table = corpus_with_duplicates(seed=0)
    rng = np.random.default_rng(1)
    before = reasons_by_position(table)
    results = []
    for _ in range(5):  # rows in any order, in one table or several chunks
        shuffled = table.take(rng.permutation(len(table)))
        chunked = pa.Table.from_batches(shuffled.to_batches(max_chunksize=97))
        results.append(reasons_by_position(mark_duplicates(chunked)))
    assert all(result == results[0] for result in results)
    result = results[0]
    kept = {position for position, reason in result.items() if reason is None}
    assert kept == first_positions(table)
    for position, reason in result.items():  # only kept rows change, and only to "duplicate"
        assert reason == before[position] or (before[position] is None and reason == "duplicate")
    overlaps = [p for p, reason in before.items() if reason == "overlaps_eval"]
    assert overlaps and all(result[p] == "overlaps_eval" for p in overlaps)


def test_dedup_groups_make_partitioned_dedup_exact():
    table = corpus_with_duplicates(seed=2, units=6)
    grouped = dedup_groups(table, groups=8)
    group = grouped["dedup_group"].to_numpy()
    assert group.min() >= 0 and group.max() < 8
    kept = grouped["reason"].is_null().to_numpy(zero_copy_only=False)
    pair_group = {}
    for pair_hash, g in zip(grouped["pair_hash"].to_numpy()[kept], group[kept]):
        assert pair_group.setdefault(int(pair_hash), int(g)) == g  # same hash, same group
    assert len(set(group[~kept].tolist())) > 1  # dropped rows are spread, not piled in one group

    # Each group de-duplicated alone, groups and rows in any order == the whole corpus at once.
    rng = np.random.default_rng(3)
    parts = []
    for g in rng.permutation(8):
        part = grouped.filter(pa.array(group == g))
        parts.append(mark_duplicates(part.take(rng.permutation(len(part)))))
    partitioned = reasons_by_position(pa.concat_tables(parts))
    assert partitioned == reasons_by_position(mark_duplicates(grouped))
    kept_positions = {p for p, reason in partitioned.items() if reason is None}
    assert kept_positions == first_positions(table)
    assert len(partitioned) == len(table)  # every record still there, once


def test_mark_duplicates_without_repeats_changes_nothing():
    table = clean_records(make_records([("a", "b"), ("c", "d")]), SplitPlan("s"), ["train"])
    assert mark_duplicates(table)["reason"].to_pylist() == [None, None]
    assert mark_duplicates(table.slice(0, 0)).num_rows == 0


def test_length_reasons():
    src = np.array([5, 300, 2, 12, 4])
    tgt = np.array([6, 10, 7, 40, 13])
    got = length_reasons(src, tgt, max_len=250, max_ratio=3.0, ratio_min_tokens=10).tolist()
    assert got == [None, "too_long", None, "length_ratio", "length_ratio"]
