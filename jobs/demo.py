"""The README's first command: a real corpus end to end on an embedded local Ray.

Builds an English->German corpus from this machine's gettext catalogs, prepares it (SentencePiece,
splits, tokenized Parquet shards) and trains a small Transformer on it for a few minutes, all under
./demo-output. Pass --output DIR (or an s3:// URI) to write elsewhere.
"""

import argparse
import os
import sys

from s2s.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo-output")
    parser.add_argument("--lang", default="de")
    parser.add_argument("--train-steps", type=int, default=200)
    args = parser.parse_args()
    corpus = f"{args.output}/corpus/en-{args.lang}.tsv"
    prepared = f"{args.output}/prepared"
    cores = os.cpu_count() or 2
    steps = [
        ["corpus", "gettext", "--lang", args.lang, "--output", corpus],
        ["prepare", "--input", corpus, "--output", prepared, "--overwrite"],
        # One worker on all but one reserved core (Ray Data reads on that one), computing on all.
        ["train", "--data", prepared, "--output", f"{args.output}/runs/demo", "--model",
         "transformer-small", "--max-steps", str(args.train_steps), "--warmup", "100",
         "--cpus-per-worker",
         str(max(cores - 1, 1)), "--torch-threads", str(cores), "--eval-every", "100",
         "--checkpoint-every", "100", "--eval-sentences", "200", "--log-every", "20"],
    ]  # fmt: skip
    for argv in steps:
        code = main(argv)
        if code:
            sys.exit(code)
