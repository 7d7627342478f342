"""Benchmark: training throughput of s2s on Ray Train against a bare loop and Hugging Face.

Measured side by side in one run, same model dimensions, same real corpus (the gettext en-de
corpus, prepared here unless --data names a prepared corpus):

  (a) a bare single-process PyTorch loop over the same model and the same token-budget batches;
  (b) s2s on Ray Train, 1 worker;  (c) 2 workers (each with half the cores);
  (d) Hugging Face ``MarianMTModel`` of identical dimensions in a bare loop, on randomly ordered
      batches of 64 sentences padded per batch (what a user of HF would write).

Reported: non-padding target tokens/s, the padding fraction, peak private memory per worker, and
model FLOP utilisation (FLOPs counted by torch's FlopCounterMode on the real batches, per second,
against this machine's measured fp32 matmul rate).

Then the training time lost per checkpoint, with checkpoints written to S3 (moto's server on
127.0.0.1, a process of its own): three runs of ``s2s train`` with one worker and the same batches,
checkpointing every ``--checkpoint-every`` steps with a synchronous upload (the worker waits for
it), with Ray Train's asynchronous upload (the default), and never; lost per checkpoint =
(training time - training time without checkpoints) / checkpoints.

    python jobs/bench_train.py [--steps 40] [--models transformer-small,rnn-small] [--gpu]
                               [--part all|throughput|checkpoints]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
import uuid
from pathlib import Path

import torch
from procmem import PeakSampler, largest_rss
from s3local import start_s3
from torch.utils.flop_counter import FlopCounterMode

from s2s import storage
from s2s.batching import collate, token_batches
from s2s.checkpoint import list_checkpoints
from s2s.config import PrepareConfig, TrainConfig, model_preset
from s2s.gettext import build_corpus
from s2s.manifest import read_manifest
from s2s.models import build_model
from s2s.objective import build_optimizer, label_smoothed_loss
from s2s.prepare import prepare_corpus
from s2s.shards import read_shard
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID
from s2s.train import train


def matmul_flops_per_s(device: str, seconds: float = 2.0) -> float:
    """Best fp32 matmul rate of this machine (2048^3, repeated)."""
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        (a @ b).sum().item()
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start))
    return best


def load_examples(root: str, limit: int = 200_000) -> list[tuple[list[int], list[int]]]:
    manifest = read_manifest(root)
    examples = []
    for shard in manifest["shards"]["train"]:
        table = read_shard(root, shard["path"], ["src_ids", "tgt_ids"])
        examples += list(zip(table["src_ids"].to_pylist(), table["tgt_ids"].to_pylist()))
        if len(examples) >= limit:
            break
    return examples


def step_flops(model, batch, device) -> float:
    """FLOPs of one forward+backward on ``batch`` (counted, not estimated)."""
    with FlopCounterMode(display=False) as counter:
        logits = model(batch["src"].to(device), batch["tgt_in"].to(device))
        loss, _, n = label_smoothed_loss(logits, batch["tgt_out"].to(device), 0.1)
        (loss / n).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bare_loop(model, batches, device, warmup: int = 3) -> dict:
    """(a): the same model and batches, one process, no Ray, no DDP."""
    model.to(device).train()
    optimizer = build_optimizer(model, 1e-3)
    tokens = positions = 0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        logits = model(batch["src"].to(device), batch["tgt_in"].to(device))
        loss, _, n = label_smoothed_loss(logits, batch["tgt_out"].to(device), 0.1)
        optimizer.zero_grad()
        (loss / n).backward()
        optimizer.step()
        if i >= warmup:
            tokens += int(n)
            positions += batch["tgt_out"].numel()
    seconds = time.perf_counter() - start
    return {"tok_s": tokens / seconds, "padding": 1 - tokens / positions, "seconds": seconds}


def hf_marian(cfg, examples, steps: int, device) -> dict:
    """(d): MarianMTModel of the same dimensions on random 64-sentence batches."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.enc_layers,
        decoder_layers=cfg.dec_layers, encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        activation_function="relu", max_position_embeddings=512, pad_token_id=PAD_ID,
        eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, dropout=cfg.dropout,
        share_encoder_decoder_embeddings=True,
    )  # fmt: skip
    model = MarianMTModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = random.Random(0)
    tokens = positions = 0
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        batch = collate([examples[rng.randrange(len(examples))] for _ in range(64)])
        labels = batch["tgt_out"].masked_fill(batch["tgt_out"] == PAD_ID, -100).to(device)
        out = model(
            input_ids=batch["src"].to(device),
            attention_mask=(batch["src"] != PAD_ID).to(device),
            decoder_input_ids=batch["tgt_in"].to(device),
            labels=labels,
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if i >= 3:
            tokens += int((labels != -100).sum())
            positions += labels.numel()
    seconds = time.perf_counter() - start
    return {"tok_s": tokens / seconds, "padding": 1 - tokens / positions, "seconds": seconds}


def ray_train(
    data: str, run: Path, preset_cfg, workers: int, steps: int, max_tokens: int, gpu: bool
):
    """(b)/(c): s2s on Ray Train; tokens/s from its own log lines after the first window."""
    shutil.rmtree(run, ignore_errors=True)
    # The defaults: 1 CPU reserved per worker, the node's cores shared by its workers.
    cfg = TrainConfig(
        data=data, output=str(run), model=preset_cfg, workers=str(workers), use_gpu=gpu,
        max_steps=steps, max_tokens=max_tokens,
        log_every=max(steps // 4, 1), eval_every=10**9, checkpoint_every=10**9, warmup=steps,
    )  # fmt: skip
    with PeakSampler(lambda: largest_rss("RayTrainWorker")) as memory:
        train(cfg)
    lines = [__import__("json").loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    windows = [m for m in lines if "tgt_tokens_per_s" in m][1:]
    rate = sum(m["tgt_tokens_per_s"] for m in windows) / max(len(windows), 1)
    return {"tok_s": rate, "rss": memory.peak}


def checkpoint_cost(data: str, preset_cfg, steps: int, every: int, max_tokens: int) -> dict:
    """Seconds of training per run and lost per checkpoint, sync and async upload to S3."""
    import boto3

    bucket = f"bench-checkpoints-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    runs = {}
    for mode in ("none", "sync", "async"):
        cfg = TrainConfig(
            data=data, output=f"s3://{bucket}/{mode}", model=preset_cfg, max_steps=steps,
            max_tokens=max_tokens, warmup=steps, log_every=every, eval_every=10**9,
            checkpoint_every=every if mode != "none" else 10**9,
            checkpoint_upload="sync" if mode == "sync" else "async",
        )  # fmt: skip
        # elapsed_s is taken before the last step: it counts the checkpoints before the last one.
        runs[mode] = train(cfg).metrics["elapsed_s"]
    checkpoints = steps // every - 1
    _, last = list_checkpoints(f"s3://{bucket}/async")[-1]
    size = sum(ref.size for ref in storage.expand(last))
    lost = {m: (runs[m] - runs["none"]) / checkpoints for m in ("sync", "async")}
    return {"seconds": runs, "lost": lost, "checkpoints": checkpoints, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a prepared corpus; default: prepare the gettext corpus")
    parser.add_argument("--models", default="transformer-small,rnn-small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--part", choices=["all", "throughput", "checkpoints"], default="all")
    parser.add_argument("--checkpoint-steps", type=int, default=80)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--workdir", default="bench-output/train")
    args = parser.parse_args()
    work = Path(args.workdir)
    device = "cuda" if args.gpu else "cpu"
    server = start_s3() if args.part != "throughput" else None  # before Ray starts: env
    data = args.data
    if not data:
        corpus = work / "en-de.tsv"
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_text("".join(f"{s}\t{t}\n" for s, t in build_corpus("de")[0]))
        data = str(work / "prepared")
        prepare_corpus(PrepareConfig(inputs=[str(corpus)], output=data, overwrite=True))
    vocab = read_manifest(data)["tokenizer"]["vocab_size"]
    presets = args.models.split(",")
    if args.part != "checkpoints":
        throughput(data, work, presets, vocab, args.steps, args.max_tokens, device, args.gpu)
    if server is not None:
        cfg = model_preset(presets[0], {"vocab_size": vocab})
        cost = checkpoint_cost(
            data, cfg, args.checkpoint_steps, args.checkpoint_every, args.max_tokens
        )
        server.terminate()
        print(
            f"\ncheckpoints to S3 (moto): {presets[0]}, {cost['bytes'] / 2**20:.0f} MiB each, "
            f"{cost['checkpoints']} in {args.checkpoint_steps} steps"
        )
        print("| upload | training s | lost per checkpoint s |")
        print("|---|---:|---:|")
        print(f"| no checkpoints | {cost['seconds']['none']:.1f} | - |")
        for mode in ("sync", "async"):
            print(f"| {mode} | {cost['seconds'][mode]:.1f} | {cost['lost'][mode]:.2f} |")


def throughput(data, work, presets, vocab, steps, max_tokens, device, gpu) -> None:
    """(a)-(d) for each preset, printed as a table."""
    examples = load_examples(data)
    peak = matmul_flops_per_s(device)
    rows = []
    for preset in presets:
        cfg = model_preset(preset, {"vocab_size": vocab})
        random.Random(0).shuffle(examples)
        batches = [collate(b) for b in token_batches(examples, max_tokens, 10_000)][: steps + 3]
        torch.manual_seed(0)
        model = build_model(cfg)
        flops_per_step = step_flops(model.to(device).train(), batches[3], device)
        useful = int((batches[3]["tgt_out"] != PAD_ID).sum())
        bare = bare_loop(model, batches, device)
        one = ray_train(data, work / f"{preset}-1", cfg, 1, steps, max_tokens, gpu)
        two = ray_train(data, work / f"{preset}-2", cfg, 2, steps, max_tokens, gpu)
        hf = hf_marian(cfg, examples, steps, device) if cfg.family == "transformer" else None
        mfu = flops_per_step / useful * one["tok_s"] / peak  # FLOPs per target token x tokens/s
        rows.append((preset, bare, one, two, hf, mfu))

    print(f"\nmachine: {os.cpu_count()} cores, fp32 matmul {peak / 1e9:.0f} GFLOP/s ({device})")
    print(
        "| model | (a) bare loop | (b) Ray 1 worker | (c) Ray 2 workers | (d) HF Marian | (b)/(a) "
        "| (b)/(d) | padding (a) / (d) | MFU (b) | peak RSS/worker 1w / 2w (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for preset, bare, one, two, hf, mfu in rows:
        hf_rate = f"{hf['tok_s']:,.0f}" if hf else "-"
        vs_hf = f"{one['tok_s'] / hf['tok_s']:.2f}x" if hf else "-"
        hf_pad = f"{hf['padding']:.0%}" if hf else "-"
        print(
            f"| {preset} | {bare['tok_s']:,.0f} | {one['tok_s']:,.0f} | {two['tok_s']:,.0f} "
            f"| {hf_rate} "
            f"| {one['tok_s'] / bare['tok_s']:.2f}x | {vs_hf} | {bare['padding']:.0%} / {hf_pad} "
            f"| {mfu:.0%} | {one['rss'] / 2**20:,.0f} / {two['rss'] / 2**20:,.0f} |"
        )
    print("\ntokens/s = non-padding target tokens per second")


if __name__ == "__main__":
    main()
