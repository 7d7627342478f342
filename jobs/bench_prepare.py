"""Benchmark: `s2s prepare` throughput against raw SentencePiece encoding, and memory vs size.

Measured side by side in one run on this machine, on the same text:

* raw: SentencePiece encodes every source and target sentence (num_threads = all cores) with the
  same model prepare produced; nothing else (no reading, cleaning, dedup, writing), with Ray shut
  down so that it has the machine to itself (best of two runs), on the 1x and on the grown
  corpus: each prepare run is compared with the raw encode of its own corpus;
* prepare: the whole Ray Data job, end to end, with the tokenizer given (--tokenizer) and with
  the tokenizer trained on a sample (two passes);
* peak private memory (RssAnon) of all processes of the job (driver, raylet, workers), summed,
  sampled every 0.2 s, at 1x and 5x the corpus size. Ray's object store is shared memory with a
  fixed budget, outside this sum.

The corpus is the gettext en-de corpus repeated with variations (a copy number appended to both
sides, so no copy is a duplicate), split into several TSV files.

    python jobs/bench_prepare.py [--pairs 1000000] [--growth 5] [--workdir bench-output]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from pathlib import Path

import ray
from procmem import PeakSampler, tree_rss

from s2s.config import PrepareConfig
from s2s.gettext import build_corpus
from s2s.prepare import prepare_corpus
from s2s.tokenizer import Tokenizer


def write_corpus(pairs: list[tuple[str, str]], n_pairs: int, out: Path, files: int = 8) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        handles = [
            stack.enter_context(open(out / f"part-{i}.tsv", "w", encoding="utf-8"))
            for i in range(files)
        ]
        for i in range(n_pairs):
            copy, (src, tgt) = i // len(pairs), pairs[i % len(pairs)]
            suffix = f" ({copy})" if copy else ""
            handles[i % files].write(f"{src}{suffix}\t{tgt}{suffix}\n")


def run_prepare(corpus: Path, output: Path, tokenizer: str | None) -> tuple[float, int, dict]:
    shutil.rmtree(output, ignore_errors=True)
    cfg = PrepareConfig(inputs=[str(corpus)], output=str(output), tokenizer=tokenizer)
    with PeakSampler(lambda: tree_rss(os.getpid())) as rss:
        start = time.perf_counter()
        result = prepare_corpus(cfg)
        seconds = time.perf_counter() - start
    return seconds, rss.peak, result.manifest


def raw_encode(corpus: Path, model: Path) -> tuple[float, int]:
    sources, targets = [], []
    for path in sorted(corpus.glob("*.tsv")):
        for line in path.open(encoding="utf-8"):
            src, tgt = line.rstrip("\n").split("\t")
            sources.append(src)
            targets.append(tgt)
    tokenizer = Tokenizer(model.read_bytes())
    start = time.perf_counter()
    tokenizer.encode(sources, num_threads=os.cpu_count())
    tokenizer.encode(targets, num_threads=os.cpu_count())
    return time.perf_counter() - start, len(sources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--growth", type=int, default=5)
    parser.add_argument("--workdir", default="bench-output")
    args = parser.parse_args()
    work = Path(args.workdir)
    pairs, _ = build_corpus("de")
    small, large = work / "corpus-1x", work / f"corpus-{args.growth}x"
    write_corpus(pairs, args.pairs, small)
    write_corpus(pairs, args.pairs * args.growth, large)
    ray.init()
    train_s, _, manifest = run_prepare(small, work / "prep-train", None)
    model = work / "prep-train" / "tokenizer.model"
    ray.shutdown()  # the baseline runs alone: nothing else on the cores
    raw_s, n = min(raw_encode(small, model) for _ in range(2))
    raw_large_s, n_large = min(raw_encode(large, model) for _ in range(2))
    assert manifest["counts"]["read"] == n

    ray.init()
    baseline_rss = tree_rss(os.getpid())
    given_s, rss_1x, _ = run_prepare(small, work / "prep-given", str(model))
    large_s, rss_5x, large_manifest = run_prepare(large, work / "prep-large", str(model))
    assert large_manifest["counts"]["read"] == n_large

    grown = f"{args.growth}x corpus"
    # (name, pairs, seconds, peak RSS, seconds of the raw encode of the same corpus)
    rows = [
        ("raw SentencePiece encode (all cores)", n, raw_s, None, raw_s),
        ("s2s prepare, tokenizer given", n, given_s, rss_1x, raw_s),
        ("s2s prepare, tokenizer trained", n, train_s, None, raw_s),
        (f"raw SentencePiece encode (all cores), {grown}", n_large, raw_large_s, None, raw_large_s),
        (f"s2s prepare, tokenizer given, {grown}", n_large, large_s, rss_5x, raw_large_s),
    ]
    print(f"\ncores: {os.cpu_count()}; Ray baseline RSS {baseline_rss / 2**20:.0f} MiB")
    print("| run | pairs | seconds | pairs/s | vs raw encode (same corpus) | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, count, seconds, rss, raw_seconds in rows:
        mib = f"{rss / 2**20:,.0f}" if rss else "-"
        rate, ratio = count / seconds, raw_seconds / seconds  # same pairs: rate / raw rate
        print(f"| {name} | {count:,} | {seconds:.1f} | {rate:,.0f} | {ratio:.2f}x | {mib} |")
    print(f"\npeak RSS {args.growth}x / 1x: {rss_5x / rss_1x:.2f}")


if __name__ == "__main__":
    main()
