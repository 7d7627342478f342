"""End-to-end prepare runs on the local Ray runtime: every format, bad lines, S3 in and out."""

import gzip
import json
from collections import Counter

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2s import storage
from s2s.config import ConfigError, PrepareConfig
from s2s.filters import split_key
from s2s.manifest import read_manifest
from s2s.placeholders import SENTINELS, mask_pair
from s2s.prepare import prepare_corpus
from s2s.shards import read_shard
from s2s.tokenizer import Tokenizer


def read_pairs(root: str, manifest: dict) -> dict[str, list[tuple[str, str]]]:
    """Decode every shard the manifest lists back to text pairs, per split: with placeholders
    as the ids hold them (masked, see :func:`masked`, where the manifest says so)."""
    protected = "placeholders" in manifest["tokenizer"]
    tokenizer = Tokenizer(storage.read_bytes(storage.join(root, "tokenizer.model")))
    out = {}
    for split, shards in manifest["shards"].items():
        pairs = []
        for shard in shards:
            table = read_shard(root, shard["path"])
            assert len(table) == shard["rows"]
            assert table["src_len"].to_pylist() == [len(x) for x in table["src_ids"].to_pylist()]
            src = tokenizer.decode(table["src_ids"].to_pylist())
            tgt = tokenizer.decode(table["tgt_ids"].to_pylist())
            if split != "train":  # evaluation splits keep the text, unmasked, for BLEU
                text = list(zip(table["src"].to_pylist(), table["tgt"].to_pylist()))
                assert (masked(text) if protected else text) == list(zip(src, tgt))
            pairs += list(zip(src, tgt))
        out[split] = pairs
    return out


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, gettext_pairs):
    """Four formats of real pairs with known bad lines: (dir, expected good pairs, drops)."""
    d = tmp_path_factory.mktemp("mixed")
    good = gettext_pairs[:3200]
    tsv, jsonl, parquet, text = good[:1500], good[1500:2300], good[2300:2800], good[2800:]
    tsv_lines = [f"{s}\t{t}" for s, t in tsv] + [
        "no tab at all",
        "a\tb\tc",
        "  \tleer",  # empty source after cleaning
        "x" * 3000 + "\ty",  # over max_line_bytes
        f"{jsonl[0][0]}\t{jsonl[0][1]}",  # duplicate of a JSONL pair
        f"{tsv[5][0]}\t{tsv[5][1]}  ",  # duplicate of a TSV pair, once cleaned
    ]
    (d / "a.tsv").write_bytes("\n".join(tsv_lines).encode() + b"\nbad \xff\tutf8\n")
    json_lines = [json.dumps({"src": s, "tgt": t}) for s, t in jsonl]
    json_lines += ["{broken", json.dumps({"src": "x"}), json.dumps({"src": None, "tgt": "y"})]
    with gzip.open(d / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(json_lines) + "\n")
    pq.write_table(
        pa.table({"src": [s for s, _ in parquet] + [None], "tgt": [t for _, t in parquet] + ["z"]}),
        d / "c.parquet",
    )
    (d / "d.en").write_text("\n".join(s for s, _ in text) + "\nextra source line\n")
    (d / "d.de").write_text("\n".join(t for _, t in text) + "\n")
    drops = {
        "missing_tab": 1,
        "extra_tabs": 1,
        "empty_source": 1,
        "line_too_long": 1,
        "invalid_utf8": 1,
        "duplicate": 2,
        "invalid_json": 1,
        "missing_key": 1,
        "null_value": 2,
        "unaligned": 1,
    }
    return d, good, drops


@pytest.fixture(scope="module")
def prepared_local(ray_local, mixed_inputs, tmp_path_factory):
    d, _, _ = mixed_inputs
    out = str(tmp_path_factory.mktemp("prepared") / "corpus")
    cfg = PrepareConfig(
        inputs=[str(d / "a.tsv"), str(d / "b.jsonl.gz"), str(d / "c.parquet")],
        src_files=[str(d / "d.en")],
        tgt_files=[str(d / "d.de")],
        output=out,
        vocab_size=1000,
        valid_size=100,
        test_size=100,
        max_len=1000,  # no length drops here: the kept set is then known exactly
        max_ratio=100,
        max_line_bytes=2000,
        shard_rows=1000,
        read_block_rows=500,
    )
    return prepare_corpus(cfg)


def test_every_line_is_accounted_for(prepared_local, mixed_inputs):
    _, good, drops = mixed_inputs
    counts = read_manifest(prepared_local.output)["counts"]
    assert counts["dropped"] == drops
    assert counts["read"] == len(good) + sum(drops.values())
    assert sum(counts["kept"].values()) == len(good)


def masked(pairs) -> list[tuple[str, str]]:
    """Pairs as prepare encodes them by default: placeholders on both sides as sentinels."""
    return [(s.text, t.text) for s, t in (mask_pair(*pair) for pair in pairs)]


def test_shards_hold_each_kept_pair_exactly_once(prepared_local, mixed_inputs):
    _, good, _ = mixed_inputs
    manifest = prepared_local.manifest
    by_split = read_pairs(prepared_local.output, manifest)
    everything = [p for pairs in by_split.values() for p in pairs]
    assert Counter(everything) == Counter(masked(good))
    # Placeholders protected: the tokenizer holds the sentinels, the ids of pairs with
    # placeholders on both sides hold them, and the manifest says so.
    assert sum("｟1｠" in s for s, _ in by_split["train"]) > 100
    assert Tokenizer(storage.read_bytes(f"{prepared_local.output}/tokenizer.model")).has_pieces(
        SENTINELS
    )
    assert manifest["tokenizer"]["placeholders"] == {"sentinels": list(SENTINELS), "pattern": ""}
    assert {k: len(v) for k, v in by_split.items()} == manifest["counts"]["kept"]
    on_disk = {
        f.uri[len(prepared_local.output) + 1 :]
        for split in ("train", "valid", "test")
        for f in storage.expand(storage.join(prepared_local.output, split))
    }
    assert on_disk == {s["path"] for shards in manifest["shards"].values() for s in shards}
    assert all(s["rows"] <= 1000 for shards in manifest["shards"].values() for s in shards)


def test_splits_are_leak_free_and_sized(prepared_local):
    by_split = read_pairs(prepared_local.output, prepared_local.manifest)
    keys = {
        split: set(split_key(pa.array([s for s, _ in pairs])).to_pylist())
        for split, pairs in by_split.items()
    }
    assert not keys["train"] & keys["valid"]
    assert not keys["train"] & keys["test"]
    assert not keys["valid"] & keys["test"]
    assert len(keys["valid"]) == 100 and len(keys["test"]) == 100  # distinct source keys


def test_manifest_contents(prepared_local, mixed_inputs):
    d, _, _ = mixed_inputs
    manifest = read_manifest(prepared_local.output)
    assert manifest["tokenizer"]["vocab_size"] == 1000
    assert manifest["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert {i["uri"] for i in manifest["inputs"]} == {
        str(d / n) for n in ("a.tsv", "b.jsonl.gz", "c.parquet", "d.en", "d.de")
    }
    assert all(i["bytes"] > 0 for i in manifest["inputs"])
    assert manifest["dropped_samples"]["invalid_utf8"] == [f"{d / 'a.tsv'}:1507"]
    assert manifest["dropped_samples"]["unaligned"] == [f"{d / 'd.en'} + {d / 'd.de'}:401"]
    # The first copy by input position stays: a.tsv (the first input) line 1505 repeats the first
    # JSONL pair, so the JSONL copy is the duplicate; a.tsv line 1506 repeats line 6 once cleaned.
    assert sorted(manifest["dropped_samples"]["duplicate"]) == [
        f"{d / 'a.tsv'}:1506",
        f"{d / 'b.jsonl.gz'}:1",
    ]
    train = manifest["lengths"]["train"]["src"]
    assert 0 < train["p50"] <= train["p95"] <= train["max"]
    assert manifest["filters"]["max_len"] == 1000
    assert "secret" not in json.dumps(manifest).lower()


def test_s3_in_and_out_with_explicit_valid(ray_local, bucket, prepared_local, gettext_pairs):
    s3 = boto3.client("s3")
    name = bucket[len("s3://") :]
    train = gettext_pairs[4000:5000]
    valid = gettext_pairs[4000:4050]  # also in train: those train copies must go
    s3.put_object(
        Bucket=name, Key="raw/train.tsv", Body="".join(f"{s}\t{t}\n" for s, t in train).encode()
    )
    s3.put_object(
        Bucket=name, Key="raw/valid.tsv", Body="".join(f"{s}\t{t}\n" for s, t in valid).encode()
    )
    tokenizer = storage.join(prepared_local.output, "tokenizer.model")
    cfg = PrepareConfig(
        inputs=[f"{bucket}/raw/train.tsv"],
        valid=[f"{bucket}/raw/valid.tsv"],
        output=f"{bucket}/prepared",
        tokenizer=tokenizer,
        test_size=0.1,
    )
    first = prepare_corpus(cfg)
    manifest = read_manifest(f"{bucket}/prepared")
    counts = manifest["counts"]
    assert counts["read"] == 1050
    assert counts["kept"]["valid"] == 50
    assert counts["dropped"].get("overlaps_eval") == 50
    assert manifest["tokenizer"]["source"] == tokenizer
    by_split = read_pairs(f"{bucket}/prepared", manifest)
    assert set(by_split["valid"]) == set(masked(valid))  # the given tokenizer has the sentinels
    assert not set(by_split["train"]) & set(masked(valid))

    with pytest.raises(ConfigError, match="is not empty; pass --overwrite"):
        prepare_corpus(cfg)
    cfg.overwrite = True
    second = prepare_corpus(cfg)  # same input, same splits and pairs: deterministic
    assert second.manifest["counts"] == first.manifest["counts"]
    again = read_pairs(f"{bucket}/prepared", read_manifest(f"{bucket}/prepared"))
    assert {k: sorted(v) for k, v in again.items()} == {k: sorted(v) for k, v in by_split.items()}


def test_preflight_errors_come_before_any_work(ray_local, tmp_path, bucket):
    (tmp_path / "ok.tsv").write_text("a\tb\n")
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    cases = [
        ({"inputs": [str(tmp_path / "missing.tsv")]}, "missing.tsv: no such file"),
        ({"inputs": [str(tmp_path / "empty.tsv")]}, "empty.tsv: input is empty"),
        ({"output": str(tmp_path / "out")}, "is not empty; pass --overwrite"),
        (
            {"output": "s3://no-such-bucket-s2s/x"},
            "s3://no-such-bucket-s2s/x: bucket does not exist",
        ),
        ({"inputs": [str(tmp_path / "ok.tsv")] * 2}, "listed twice"),
        ({"tokenizer": str(tmp_path / "none.model")}, "none.model: tokenizer model not found"),
        ({"valid_size": 5}, "leave no training data"),
    ]
    for changes, message in cases:
        cfg = PrepareConfig(inputs=[str(tmp_path / "ok.tsv")], output=str(tmp_path / "new"))
        for key, value in changes.items():
            setattr(cfg, key, value)
        with pytest.raises((ConfigError, storage.StorageError), match=message):
            prepare_corpus(cfg)
