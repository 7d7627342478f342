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

    python jobs/bench_train.py [--steps 40] [--models transformer-small,rnn-small] [--gpu]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from pathlib import Path

import torch
from procmem import PeakSampler, largest_rss
from torch.utils.flop_counter import FlopCounterMode

from s2s.batching import collate, token_batches
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
            tokens += n
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
    cores = os.cpu_count() or 2
    # Reserve one core less than there are (Ray Data reads on it); compute on all of them.
    cfg = TrainConfig(
        data=data, output=str(run), model=preset_cfg, workers=workers, use_gpu=gpu,
        cpus_per_worker=max((cores - 1) / workers, 0.5), torch_threads=max(cores // workers, 1),
        max_steps=steps, max_tokens=max_tokens,
        log_every=max(steps // 4, 1), eval_every=10**9, checkpoint_every=10**9, warmup=steps,
    )  # fmt: skip
    with PeakSampler(lambda: largest_rss("RayTrainWorker")) as memory:
        train(cfg)
    lines = [__import__("json").loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    windows = [m for m in lines if "tgt_tokens_per_s" in m][1:]
    rate = sum(m["tgt_tokens_per_s"] for m in windows) / max(len(windows), 1)
    return {"tok_s": rate, "rss": memory.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a prepared corpus; default: prepare the gettext corpus")
    parser.add_argument("--models", default="transformer-small,rnn-small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--workdir", default="bench-output/train")
    args = parser.parse_args()
    work = Path(args.workdir)
    device = "cuda" if args.gpu else "cpu"
    data = args.data
    if not data:
        corpus = work / "en-de.tsv"
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_text("".join(f"{s}\t{t}\n" for s, t in build_corpus("de")[0]))
        data = str(work / "prepared")
        prepare_corpus(PrepareConfig(inputs=[str(corpus)], output=data, overwrite=True))
    examples = load_examples(data)
    vocab = read_manifest(data)["tokenizer"]["vocab_size"]
    peak = matmul_flops_per_s(device)
    rows = []
    for preset in args.models.split(","):
        cfg = model_preset(preset, {"vocab_size": vocab})
        random.Random(0).shuffle(examples)
        batches = [collate(b) for b in token_batches(examples, args.max_tokens, 10_000)][
            : args.steps + 3
        ]
        torch.manual_seed(0)
        model = build_model(cfg)
        flops_per_step = step_flops(model.to(device).train(), batches[3], device)
        useful = int((batches[3]["tgt_out"] != PAD_ID).sum())
        bare = bare_loop(model, batches, device)
        one = ray_train(data, work / f"{preset}-1", cfg, 1, args.steps, args.max_tokens, args.gpu)
        two = ray_train(data, work / f"{preset}-2", cfg, 2, args.steps, args.max_tokens, args.gpu)
        hf = hf_marian(cfg, examples, args.steps, device) if cfg.family == "transformer" else None
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
