"""The README's first command, as a newcomer runs it: jobs/demo.py on an embedded local Ray,
through every stage (corpus, prepare, train, evaluate, translate)."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from s2s.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_demo_job_end_to_end(tmp_path, gettext_pairs):
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, not the test session's
    done = subprocess.run(
        [sys.executable, "jobs/demo.py", "--output", str(tmp_path), "--train-steps", "10"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"prepared {tmp_path}/prepared" in done.stdout
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["read"] == len(gettext_pairs)
    assert counts["read"] == sum(counts["kept"].values()) + sum(counts["dropped"].values())
    assert counts["kept"]["valid"] >= 2000 and counts["kept"]["test"] >= 2000
    proto = (tmp_path / "prepared" / "tokenizer.model").read_bytes()
    assert Tokenizer(proto).vocab_size == manifest["tokenizer"]["vocab_size"]  # the one it names
    run = tmp_path / "runs" / "transformer-small"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 10 and "bleu" in logged[-1]  # its 10 steps, the last evaluated
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["sentences"] == 500 and f"test BLEU     {scores['bleu']}" in done.stdout
    docs = (tmp_path / "docs" / "sample.jsonl").read_text().splitlines()
    rows = (tmp_path / "translations" / "sample.jsonl").read_text().splitlines()
    assert len(rows) == len(docs) == 6
    assert all(json.loads(r)["error"] is None for r in rows)
    assert f"translations  {tmp_path}/translations/sample.jsonl (6 documents)" in done.stdout


def test_pipeline_job_is_the_cli_command(tmp_path):
    """jobs/pipeline.py runs `s2s pipeline`: a bad setting is refused before any work, with the
    CLI's exit status and one last line."""
    argv = ["--corpus", "c.tsv", "--docs", "d", "--output", str(tmp_path), "train.lrr=1"]
    done = subprocess.run(
        [sys.executable, "jobs/pipeline.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == "s2s: error: unknown config key 'train.lrr'; did you mean 'lr'?"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_benchmarks_build_their_corpus_where_the_shared_one_is_missing(tmp_path, monkeypatch):
    """A clean clone has no ../shared/corpus: the benchmarks build train/valid/test from this
    machine's catalogs, the same on every run, no English string in two splits."""
    sys.path.insert(0, str(ROOT / "jobs"))
    import benchcorpus

    monkeypatch.setattr(benchcorpus, "SHARED", tmp_path / "absent")
    corpus = benchcorpus.bench_corpus(tmp_path / "work", held_out=500)
    assert corpus == tmp_path / "work" / "corpus-de"
    splits = {}
    for split in benchcorpus.SPLITS:
        with gzip.open(corpus / f"{split}.tsv.gz", "rt", encoding="utf-8") as f:
            splits[split] = [line.rstrip("\n").split("\t") for line in f]
    assert len(splits["valid"]) == len(splits["test"]) == 500 and len(splits["train"]) >= 1000
    sources = [{src for src, _ in rows} for rows in splits.values()]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
    again = benchcorpus.split_pairs([tuple(p) for rows in splits.values() for p in rows], 500)
    assert [again[s] for s in ("valid", "test")] == [
        [tuple(p) for p in splits[s]] for s in ("valid", "test")
    ]
