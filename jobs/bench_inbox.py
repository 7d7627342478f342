"""Benchmark: ``s2s translate`` over a nightly inbox of many small files on S3.

Measured on this machine: planning time (listing and pieces, until work is handed to Ray), the
whole run, files/s and the driver's peak memory; then the same for a rerun over the same prefix,
when every output is complete (listings only: the nightly run on a day without new files).

Setup, all local: moto's S3 server on 127.0.0.1 in a process of its own (so that the driver's
memory is the driver's); N small JSONL files, one or two short English documents each (real UI
strings from the German gettext catalogs under /usr/share/locale), uploaded by a pool of threads;
a tiny real Transformer trained here for a few seconds without Ray (as the tests' checkpoint) and
copied into the bucket, so that workers read the model from S3. One local Ray runtime; each
translate run is a fresh driver process that joins it (as a nightly job joins its cluster), with
greedy search and the default settings otherwise (one translator actor, 1 CPU).

Driver memory: the peak resident set of the driver process (VmHWM: its own pages, libraries and
the object-store pages it touched) and its peak private memory (RssAnon, sampled every 0.2 s),
each with the value just before the run.

    python jobs/bench_inbox.py [--files 100000] [--storage s3|local] [--workdir bench-output/inbox]

``--storage local`` runs the same on this machine's disk: the moto server (one Python process,
about 160 requests/s here) bounds the S3 runs long before the job does.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from procmem import PeakSampler
from s3local import start_s3

LOCALE_DIR = "/usr/share/locale"


def tiny_checkpoint(pairs: list[tuple[str, str]], out: str, epochs: int = 6) -> None:
    """A tiny Transformer (d 64, 2+2 layers, 600 pieces) trained for a few seconds on real pairs:
    it ends its sentences, so greedy decoding does realistic work (as tests/conftest.py)."""
    import torch

    from s2s.batching import collate, token_batches
    from s2s.checkpoint import save_checkpoint
    from s2s.config import model_preset
    from s2s.models import build_model
    from s2s.objective import build_optimizer, label_smoothed_loss
    from s2s.tokenizer import Tokenizer, train_tokenizer

    proto = train_tokenizer([s for p in pairs for s in p], vocab_size=600)
    tokenizer = Tokenizer(proto)
    encoded = zip(tokenizer.encode([s for s, _ in pairs]), tokenizer.encode([t for _, t in pairs]))
    examples = [(s, t) for s, t in encoded if len(s) <= 40 and len(t) <= 40]
    config = model_preset(
        "transformer-small",
        {"vocab_size": tokenizer.vocab_size, "d_model": 64, "ffn_dim": 128, "heads": 4,
         "enc_layers": 2, "dec_layers": 2, "dropout": 0.0, "max_positions": 128},
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, 3e-3)
    step = 0
    for _ in range(epochs):
        for batch in token_batches(examples, max_tokens=2000, seed=step):
            tensors = collate(batch)
            loss, _, tokens = label_smoothed_loss(
                model(tensors["src"], tensors["tgt_in"]), tensors["tgt_out"], 0.1
            )
            optimizer.zero_grad()
            (loss / tokens).backward()
            optimizer.step()
            step += 1
    save_checkpoint(out, model.eval(), config, proto, {"step": step})


def write_inbox(root: str, sentences: list[str], files: int, threads: int = 16) -> int:
    """``files`` JSONL files of one or two documents each under ``root`` (``s3://`` or local),
    a thousand per directory, written by a pool of threads; returns the number of documents."""
    import boto3

    client = boto3.client("s3") if root.startswith("s3://") else None
    rng = random.Random(0)
    texts = [rng.sample(sentences, rng.choice((1, 2))) for _ in range(files)]

    def put(f: int) -> None:
        lines = [json.dumps({"id": f"{f}-{d}", "text": t}) for d, t in enumerate(texts[f])]
        body, name = ("\n".join(lines) + "\n").encode(), f"{f // 1000:03d}/{f:07d}.jsonl"
        if client:  # what a nightly export does: one PUT per file
            client.put_object(Bucket=root[5:], Key=name, Body=body)
        else:
            path = Path(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(files)))
    return sum(map(len, texts))


def own_rss_anon() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("RssAnon:")[1].split()[0]) * 1024


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) * 1024


def measured_run(cfg: dict, address: str) -> dict:
    """One ``translate`` in this (fresh) process, joined to the running Ray: the figures."""
    import ray

    from s2s.config import TranslateConfig
    from s2s.translate import translate

    logging.basicConfig(level=logging.WARNING)
    ray.init(address=address, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    before = {"rss_mib": vm_hwm() / 2**20, "private_mib": own_rss_anon() / 2**20}
    with PeakSampler(own_rss_anon) as private:
        start = time.perf_counter()
        summary = translate(TranslateConfig(**cfg)).summary
        wall = time.perf_counter() - start
    ray.shutdown()
    return {
        "wall_s": wall, "summary": summary, "before": before,
        "peak_rss_mib": vm_hwm() / 2**20, "peak_private_mib": private.peak / 2**20,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--storage", choices=("s3", "local"), default="s3",
                        help="s3: moto's S3 server here; local: this machine's disk")  # fmt: skip
    parser.add_argument("--workdir", default="bench-output/inbox")
    args = parser.parse_args()
    work = Path(args.workdir).resolve() / f"{args.storage}-{args.files}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = start_s3() if args.storage == "s3" else None
    try:
        import boto3
        import ray

        from s2s import storage
        from s2s.gettext import build_corpus

        pairs, _ = build_corpus("de", LOCALE_DIR)
        started = time.perf_counter()
        tiny_checkpoint(pairs[:4000], str(work / "checkpoint"))
        train_s = time.perf_counter() - started
        # Separate buckets, as in production (s3://inbox/, s3://outbox/).
        roots = {"inbox": "s3://inbox", "out": "s3://outbox", "model": "s3://models/tiny"}
        if server is None:
            roots = {"inbox": str(work / "inbox"), "out": str(work / "out"),
                     "model": str(work / "checkpoint")}  # fmt: skip
        else:
            for bucket in ("inbox", "outbox", "models"):
                boto3.client("s3").create_bucket(Bucket=bucket)
            for path in (work / "checkpoint").iterdir():
                storage.write_bytes(storage.join(roots["model"], path.name), path.read_bytes())
        sentences = [s for s, _ in pairs if 10 <= len(s) <= 80]
        started = time.perf_counter()
        documents = write_inbox(roots["inbox"], sentences, args.files)
        upload_s = time.perf_counter() - started
        print(f"{args.files:,} files ({documents:,} documents) written in {upload_s:.0f} s; "
              f"checkpoint trained in {train_s:.0f} s")  # fmt: skip

        ray.init(num_cpus=os.cpu_count(), logging_level=logging.WARNING)
        address = ray.get_runtime_context().gcs_address
        cfg = {
            "checkpoint": roots["model"],
            "input": roots["inbox"],
            "output": roots["out"],
            "beam": 1,
        }
        runs = {}
        for name in ("first run", "rerun (all complete)"):
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                runs[name] = pool.apply(measured_run, (cfg, address))
        ray.shutdown()
    finally:
        if server is not None:
            server.terminate()

    first = runs["first run"]["summary"]
    assert first["inputs"]["translated"] == args.files and first["rows_written"] == documents
    where = "S3 (moto)" if server is not None else "local disk"
    print(f"\ns2s translate over {args.files:,} small JSONL files on {where}, greedy, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print("| run | planning s | whole run s | files/s | driver peak RSS MiB (before) "
          "| driver peak private MiB (before) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name, run in runs.items():
        s = run["summary"]
        print(f"| {name} | {s['planning_s']:.1f} | {s['seconds']:.1f} | "
              f"{args.files / s['seconds']:,.0f} | {run['peak_rss_mib']:,.0f} "
              f"({run['before']['rss_mib']:,.0f}) | {run['peak_private_mib']:,.0f} "
              f"({run['before']['private_mib']:,.0f}) |")  # fmt: skip
    result = {"files": args.files, "storage": args.storage, "documents": documents,
              "write_s": upload_s, "cores": os.cpu_count(), "runs": runs}  # fmt: skip
    out = Path(args.workdir).resolve() / f"results-{args.storage}-{args.files}.json"
    out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)  # 100,000 files of inputs and outputs


if __name__ == "__main__":
    main()
