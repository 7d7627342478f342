"""A corpus is complete or visibly not: a prepare that fails midway leaves no manifest, and the
same command run again replaces what it left, by hand or from the pipeline. Real prepare runs on
the local Ray runtime, with a failure injected into the driver's side of the main pass."""

import json

import pytest

from s2s import storage
from s2s.config import ConfigError, PrepareConfig
from s2s.lease import LEASE_NAME, Lease, LeaseHeld
from s2s.manifest import (
    MANIFEST_NAME,
    PREPARE_MARKER,
    ManifestError,
    PrepareStats,
    begin_prepare,
    corpus_state,
    finish_prepare,
    prepare_lease,
    read_manifest,
    write_manifest,
)
from s2s.pipeline import prepare_stage
from s2s.prepare import prepare_corpus
from s2s.tokenizer import train_tokenizer

PAIRS = 3000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, gettext_pairs):
    """A TSV of real pairs and a tokenizer for it: prepare then needs no scan, only its main
    pass (fractional valid/test sizes, a given tokenizer), which is where the failures go."""
    d = tmp_path_factory.mktemp("rerun")
    pairs = gettext_pairs[:PAIRS]
    (d / "a.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    (d / "tok.model").write_bytes(train_tokenizer([x for p in pairs for x in p], vocab_size=400))
    return d


def config(inputs, out, **changes) -> PrepareConfig:
    return PrepareConfig(
        inputs=[str(inputs / "a.tsv")], output=str(out), tokenizer=str(inputs / "tok.model"),
        valid_size=0.05, test_size=0.05, shard_rows=200, **changes,
    )  # fmt: skip


def fail_midway(monkeypatch, after: int = 2) -> None:
    """The driver dies once ``after`` of the main pass' batches came back: their shards are
    written, the others are not, and the run never gets to its manifest."""
    merge, merged = PrepareStats.merge, []

    def failing(self, other):
        merged.append(other)
        if len(merged) == after + 1:
            raise RuntimeError("injected: the driver died midway")
        merge(self, other)

    monkeypatch.setattr(PrepareStats, "merge", failing)


def shards_on_disk(out) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.glob("*/part-*.parquet")}


def assert_complete(out) -> dict:
    manifest = read_manifest(str(out))
    assert manifest["counts"]["read"] == PAIRS
    listed = {s["path"] for shards in manifest["shards"].values() for s in shards}
    assert shards_on_disk(out) == listed
    assert not (out / PREPARE_MARKER).exists()
    assert corpus_state(str(out)) == "complete" and prepare_stage(str(out)) == "skip"
    return manifest


def assert_incomplete(out) -> None:
    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(ManifestError, match="missing"):
        read_manifest(str(out))  # what train says to it
    assert corpus_state(str(out)) == "incomplete"
    assert prepare_stage(str(out)) == "rerun"  # the pipeline prepares it again, no person needed


def test_a_failed_prepare_leaves_no_manifest_and_the_same_command_completes(
    ray_local, inputs, tmp_path, monkeypatch
):
    out = tmp_path / "corpus"
    assert prepare_stage(str(out)) == "run"
    fail_midway(monkeypatch)
    with pytest.raises(RuntimeError, match="injected"):
        prepare_corpus(config(inputs, out))
    assert shards_on_disk(out), "the failure was meant to come after some shards were written"
    assert json.loads((out / PREPARE_MARKER).read_text())["started"]
    assert_incomplete(out)

    result = prepare_corpus(config(inputs, out))  # the same command: no --overwrite needed
    assert result.manifest == assert_complete(out)

    # A complete corpus whose shards went missing (an older s2s's failed --overwrite left one):
    # not complete, so the pipeline prepares it again, and prepare replaces it.
    next(iter((out / "train").glob("part-*.parquet"))).unlink()
    assert corpus_state(str(out)) == "incomplete" and prepare_stage(str(out)) == "rerun"
    prepare_corpus(config(inputs, out))
    assert_complete(out)


def test_a_failed_overwrite_leaves_no_manifest(ray_local, inputs, tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    first = prepare_corpus(config(inputs, out))
    with pytest.raises(ConfigError, match="is not empty; pass --overwrite"):
        prepare_corpus(config(inputs, out))

    # Failing before it writes anything, an overwrite leaves the old corpus whole.
    def refuse(*args):
        raise ConfigError("injected: refused after the checks")

    with monkeypatch.context() as patch:
        patch.setattr("s2s.prepare._split_plan", refuse)
        with pytest.raises(ConfigError, match="injected"):
            prepare_corpus(config(inputs, out, overwrite=True))
    assert assert_complete(out) == first.manifest

    # Failing in the main pass, it leaves no manifest: the old corpus is gone, visibly.
    fail_midway(monkeypatch)
    with pytest.raises(RuntimeError, match="injected"):
        prepare_corpus(config(inputs, out, overwrite=True))
    assert_incomplete(out)
    again = prepare_corpus(config(inputs, out))
    assert again.manifest["counts"] == first.manifest["counts"]
    assert_complete(out)


def test_only_what_a_prepare_left_is_replaced_and_one_prepare_at_a_time(
    ray_local, inputs, tmp_path
):
    leftovers = tmp_path / "killed"  # an older s2s killed midway: shards, no marker, no manifest
    (leftovers / "train").mkdir(parents=True)
    (leftovers / "train" / "part-0123abcd.parquet").write_bytes(b"PAR1")
    (leftovers / "tokenizer.model.tmp-0123abcd").write_bytes(b"")
    assert corpus_state(str(leftovers)) == "incomplete"

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a corpus")
    assert corpus_state(str(foreign)) == "foreign" and prepare_stage(str(foreign)) == "run"
    with pytest.raises(ConfigError, match="is not empty; pass --overwrite .* no prepare wrote"):
        prepare_corpus(config(inputs, foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # refused untouched
    (foreign / PREPARE_MARKER).write_text("{}")  # a prepare --overwrite started here
    assert corpus_state(str(foreign)) == "incomplete"

    held = pytest.raises(LeaseHeld, match="another prepare is writing")
    with Lease(str(leftovers / LEASE_NAME)), held:  # another prepare is at work there
        prepare_corpus(config(inputs, leftovers))
    prepare_corpus(config(inputs, leftovers))
    assert_complete(leftovers)
    assert not (leftovers / "tokenizer.model.tmp-0123abcd").exists()


def test_the_marks_work_on_s3_as_on_a_local_disk(bucket):
    root = f"{bucket}/corpus"
    shard, tokenizer = f"{root}/train/part-00ff.parquet", f"{root}/tokenizer.model"
    listed = {"train": [{"path": "train/part-00ff.parquet"}]}
    manifest = {"tokenizer": {"file": "tokenizer.model"}, "shards": listed}
    assert corpus_state(root) == "empty"
    with prepare_lease(root):
        begin_prepare(root, {"by": "test"})  # nothing to clear yet
        assert corpus_state(root) == "incomplete"
        storage.write_bytes(shard, b"x")
        storage.write_bytes(tokenizer, b"x")
        finish_prepare(root, manifest)
    assert corpus_state(root) == "complete"
    assert not storage.exists(f"{root}/{PREPARE_MARKER}")
    assert not storage.exists(f"{root}/{LEASE_NAME}")

    with prepare_lease(root):  # an --overwrite: the manifest goes first, then the shards
        begin_prepare(root, {"by": "test"})
        assert not storage.exists(f"{root}/{MANIFEST_NAME}") and not storage.exists(shard)
        assert corpus_state(root) == "incomplete"
    storage.write_bytes(f"{root}/notes.txt", b"x")
    assert corpus_state(root) == "incomplete"  # the marker says a prepare started here
    write_manifest(root, manifest)  # lists a shard that is gone
    assert corpus_state(root) == "incomplete"
