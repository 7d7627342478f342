"""The README's first command: the whole pipeline on a real corpus, on an embedded local Ray.

1. an English->German corpus from this machine's gettext catalogs (s2s corpus gettext);
2. prepare it (SentencePiece, leak-free splits, tokenized Parquet shards);
3. a sample document set: held-out test sentences grouped into documents with paragraphs;
4. jobs/pipeline.py's stages: train a transformer-small for --minutes (5), evaluate it on the test
   split (sacreBLEU, beam 4), translate the documents into --output/translations;
5. print where everything is and a few translations.

Everything goes under ./demo-output (or --output DIR, local or s3://); a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from s2s import storage
from s2s.cli import main as s2s
from s2s.config import PrepareConfig, train_config
from s2s.manifest import MANIFEST_NAME, read_manifest
from s2s.pipeline import PipelineConfig, run_pipeline
from s2s.shards import read_shard

RECIPES = Path(__file__).resolve().parent / "configs" / "quality"


def sample_documents(prepared: str, count: int = 6, per_doc: int = 4) -> list[dict]:
    """Documents of held-out test sentences: two paragraphs each."""
    shard = read_manifest(prepared)["shards"]["test"][0]
    sources = read_shard(prepared, shard["path"], ["src"])["src"].to_pylist()
    sentences = [s for s in sources if 20 <= len(s) <= 120][: count * per_doc]
    docs = []
    for i in range(0, len(sentences), per_doc):
        part = sentences[i : i + per_doc]
        half = len(part) // 2
        docs.append({"id": f"doc-{i // per_doc + 1}",
                     "text": "\n".join(part[:half]) + "\n\n" + "\n".join(part[half:])})  # fmt: skip
    return docs


def run(args: argparse.Namespace) -> int:
    out = storage.absolute(args.output)
    corpus = storage.join(out, "corpus", f"en-{args.lang}.tsv")
    if not storage.exists(corpus) and s2s(
        ["corpus", "gettext", "--lang", args.lang, "--output", corpus]
    ):
        return 2
    cores = os.cpu_count() or 2
    cfg = PipelineConfig(corpus=[corpus], docs=storage.join(out, "docs"), output=out)
    cfg.prepare = PrepareConfig()
    # The benchmark's short-budget recipe (jobs/configs/quality/transformer-small.yaml: two
    # training workers sharing the cores); evaluation on 500 test sentences; one translator actor.
    recipe = yaml.safe_load((RECIPES / "transformer-small.yaml").read_text())
    if cores < 2:  # one worker, the same tokens per step
        recipe.update(workers="1", max_tokens=2 * recipe["max_tokens"])
    cfg.train = dataclasses.replace(
        train_config(recipe), max_time_min=args.minutes, max_steps=args.train_steps,
        eval_every=100, checkpoint_every=100, eval_sentences=200,
    )  # fmt: skip
    cfg.evaluate.limit = 500
    cfg.evaluate.torch_threads = cores
    cfg.translate.cpus_per_actor, cfg.translate.torch_threads = 1, cores
    cfg.resolve()

    if not storage.exists(storage.join(cfg.prepare.output, MANIFEST_NAME)):
        s2s(["prepare", "--input", corpus, "--output", cfg.prepare.output])
    docs = sample_documents(cfg.prepare.output)
    body = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode()
    storage.write_bytes(storage.join(cfg.docs, "sample.jsonl"), body)

    report = run_pipeline(cfg)
    translations = storage.read_bytes(storage.join(cfg.translate.output, "sample.jsonl"))
    rows = [json.loads(line) for line in translations.decode().splitlines()]
    evaluation = report["evaluate"]
    print("\n== s2s demo: done ==")
    print(f"corpus        {corpus}")
    print(f"prepared      {cfg.prepare.output}")
    print(f"model         {report['train']['checkpoint']}")
    print(f"training log  {cfg.train.output}/metrics.jsonl, curves.png")
    print(f"test BLEU     {evaluation['bleu']} (chrF {evaluation['chrf']}, beam 4, "
          f"{evaluation['sentences']} sentences; {evaluation['signature']['bleu']})")  # fmt: skip
    print(f"translations  {cfg.translate.output}/sample.jsonl ({len(rows)} documents)")
    for doc, row in list(zip(docs, rows))[:3]:
        print(f"\n[{doc['id']}]\n{doc['text']}\n  ->\n{row['translation']}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo-output")
    parser.add_argument("--lang", default="de")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time")
    parser.add_argument("--train-steps", type=int, default=0, help="stop earlier (0: no limit)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(run(parser.parse_args()))
