"""Benchmark: placeholder protection, on against off, side by side in one run.

The same corpus (the shared en-de gettext corpus where it is there, else one built from this
machine's catalogs: jobs/benchcorpus.py) is prepared twice: with ``protect_placeholders`` (the
default: placeholders found on both sides of a pair become sentinels, which the tokenizer keeps
as single pieces) and without (placeholders spelled as ordinary pieces, s2s before protection).
transformer-small is trained on each with the bench_quality recipe for the same number of steps
(not wall-clock: the two arms then get the same training whatever else runs on the machine; by
default as many as hold 2.4M tokens of batch budget, the 600 steps of 4,000 of the measured
run), and each is scored on the whole test split by ``s2s evaluate`` with the defaults users get
(beam 4, length penalty 1.0): BLEU and chrF on every sentence, and on the sentences whose source
holds a placeholder their fidelity (the multiset kept exactly: s2s.placeholders) and BLEU/chrF. The
protected arm also reports how many of those sentences were masked, and how many came back with a
sentinel lost, doubled or invented and were translated again unmasked.

    python jobs/bench_placeholders.py [--steps N] [--lang de] [--arms protected,unprotected]
                                      [--score-only]

``--score-only`` scores the checkpoints an earlier run trained (after a change to decoding, say)
without training them again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import yaml
from benchcorpus import bench_corpus, prepare_bench_corpus

from s2s.checkpoint import list_checkpoints
from s2s.config import DecodeConfig, EvaluateConfig, train_config
from s2s.evaluate import evaluate, load_pairs
from s2s.placeholders import placeholders
from s2s.train import train
from s2s.translator import Translator

RECIPE = Path(__file__).resolve().parent / "configs" / "quality" / "transformer-small.yaml"
ARMS = {"protected": True, "unprotected": False}
# Tokens of batch budget each arm trains on by default (600 steps of 4,000, the measured run),
# so the arms train as much whatever the recipe's tokens per step.
ARM_TOKENS = 2_400_000


def run_arm(name: str, data: str, work: Path, steps: int, limit: int, trained: dict | None) -> dict:
    """Train transformer-small on ``data`` for ``steps`` steps, then score its last checkpoint.
    ``trained``: the arm's row of an earlier run, whose checkpoint is scored again instead."""
    run = work / f"run-{name}"
    if trained is None:
        shutil.rmtree(run, ignore_errors=True)
        cfg = train_config(yaml.safe_load(RECIPE.read_text()))
        per_step = cfg.max_tokens * cfg.worker_range()[1] * cfg.update_freq
        steps = steps or round(ARM_TOKENS / per_step)
        cfg = dataclasses.replace(cfg, data=data, output=str(run), max_steps=steps)
        started = time.perf_counter()
        train(cfg)
        train_s = time.perf_counter() - started
    else:
        steps, train_s = trained["steps"], trained["train_s"]
    checkpoint = list_checkpoints(str(run))[-1][1]
    report = evaluate(
        EvaluateConfig(checkpoint=checkpoint, data=data, split="test", beam=4, limit=limit,
                       torch_threads=os.cpu_count() or 2)
    )  # fmt: skip
    row = {"arm": name, "steps": steps, "train_s": round(train_s)}
    row |= {k: report[k] for k in ("bleu", "chrf", "placeholders", "seconds")}
    if ARMS[name]:
        row["sentinels"] = sentinel_counts(checkpoint, data, limit)
    return row


def sentinel_counts(checkpoint: str, data: str, limit: int) -> dict:
    """Of the test sentences with placeholders: how many were masked, and how many came back
    without every sentinel exactly once, so that the translator translated them again unmasked."""
    sources = [s for s in load_pairs(data, "test", limit)[0] if placeholders(s)]
    translator = Translator(DecodeConfig(checkpoint=checkpoint, beam=4))
    translator.translate_sentences(sources)
    return {"masked": translator.masked_sentences, "retried": translator.unmasked_retries}


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'arm':<12} {'steps':>5} {'train s':>7} {'BLEU':>5} {'chrF':>5} | {'ph sent':>7} "
        f"{'kept %':>6} {'ref kept %':>10} {'ph BLEU':>7} {'ph chrF':>7} | masked / retried"
    )
    for r in rows:
        ph = r["placeholders"]
        sentinels = r.get("sentinels")
        extra = f"{sentinels['masked']} / {sentinels['retried']}" if sentinels else "-"
        print(
            f"{r['arm']:<12} {r['steps']:>5} {r['train_s']:>7} {r['bleu']:>5.1f} {r['chrf']:>5.1f}"
            f" | {ph['sentences']:>7} {ph['fidelity']:>6.1f} {ph['reference_fidelity']:>10.1f}"
            f" {ph.get('bleu', 0):>7.1f} {ph.get('chrf', 0):>7.1f} | {extra}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help=f"training steps per arm (default: {ARM_TOKENS:,} tokens of batch budget)",
    )
    parser.add_argument("--lang", default="de")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--limit", type=int, default=0, help="test pairs scored (0: all)")
    parser.add_argument("--workdir", default="bench-output/placeholders")
    parser.add_argument(
        "--score-only", action="store_true", help="score the arms' checkpoints again, untrained"
    )
    args = parser.parse_args()
    work = Path(args.workdir).resolve() / args.lang
    work.mkdir(parents=True, exist_ok=True)
    corpus = bench_corpus(work, args.lang)
    print(f"corpus: {corpus}")
    # Arms run in one go by default; one run apart (--arms) replaces its row in results.json,
    # and the table shows every arm there, each row with its step count.
    results = work / "results.json"
    rows = {r["arm"]: r for r in json.loads(results.read_text())} if results.exists() else {}
    for name in args.arms.split(","):
        data = prepare_bench_corpus(
            corpus, str(work / f"prepared-{name}"), protect_placeholders=ARMS[name]
        )
        if args.score_only and name not in rows:
            raise SystemExit(f"--score-only: no earlier run of {name} in {results}")
        trained = rows[name] if args.score_only else None
        rows[name] = run_arm(name, data, work, args.steps, args.limit, trained)
        print(json.dumps(rows[name]), flush=True)
        results.write_text(json.dumps(list(rows.values()), indent=2))
    print_table([rows[name] for name in ARMS if name in rows])


if __name__ == "__main__":
    main()
