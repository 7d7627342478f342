"""The README's first command: a real corpus end to end on an embedded local Ray.

Builds an English->German corpus from this machine's gettext catalogs, then prepares it
(SentencePiece, splits, tokenized Parquet shards) under ./demo-output. Pass --output DIR (or an
s3:// URI) to write elsewhere.
"""

import argparse
import sys

from s2s.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo-output")
    parser.add_argument("--lang", default="de")
    args = parser.parse_args()
    corpus = f"{args.output}/corpus/en-{args.lang}.tsv"
    code = main(["corpus", "gettext", "--lang", args.lang, "--output", corpus])
    if code == 0:
        code = main(
            ["prepare", "--input", corpus, "--output", f"{args.output}/prepared", "--overwrite"]
        )
    sys.exit(code)
