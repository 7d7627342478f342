"""Benchmark: training throughput of s2s on Ray Train against a bare loop and Hugging Face.

Measured side by side in one run, same model dimensions, same real corpus (the gettext en-de
corpus, prepared here unless --data names a prepared corpus), same precision (``--precision``,
default ``auto`` as ``s2s train``: bf16 autocast where the device computes bf16 natively):

  (a) a bare single-process PyTorch loop over the same model and exactly the batches that (b)
      trains on (s2s's epoch plan, rebuilt here; checked against the run's data digest);
  (b) s2s on Ray Train, 1 worker;  (c) 2 workers (each with half the cores);
  (d) Hugging Face ``MarianMTModel`` of identical dimensions in a bare loop, on randomly ordered
      batches of 64 sentences padded per batch (what a user of HF would write);
  (e) the same on length-grouped batches of 64 (what ``Trainer(group_by_length=True)`` does),
      so that (b)/(e) compares the frameworks on equal batching, (b)/(d) the batching too.

(a)-(c) time the same steps (after the first log window of the run: warm-up). Reported:
non-padding target tokens/s (for (c) summed over both ranks: each rank's tokens of the timed
steps over the run's wall-clock of those steps), the padding fraction, peak private memory per
worker, and model FLOP utilisation: the FLOPs of the real (non-padding) tokens of every timed step,
counted with torch's FlopCounterMode (see :func:`sentence_flops`), per second, against this
machine's measured matmul rate in the training precision (fp32 and bf16 rates both printed).

Then the training time lost per checkpoint, with checkpoints written to S3 (moto's server on
127.0.0.1, a process of its own): three runs of ``s2s train`` with one worker and the same batches,
checkpointing every ``--checkpoint-every`` steps with a synchronous upload (the worker waits for
it), with Ray Train's asynchronous upload (the default), and never; lost per checkpoint =
(training time - training time without checkpoints) / checkpoints.

    python jobs/bench_train.py [--steps 40] [--models transformer-small,rnn-small] [--gpu]
                               [--precision auto|fp32|bf16] [--dropout P]
                               [--part all|throughput|checkpoints]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from procmem import PeakSampler, largest_rss
from s3local import start_s3
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from s2s import storage
from s2s.batching import Example, collate
from s2s.checkpoint import list_checkpoints
from s2s.config import PrepareConfig, TrainConfig, model_preset
from s2s.device import autocast, enable_tf32, resolve_precision, shape_stable_attention
from s2s.gettext import build_corpus
from s2s.manifest import read_manifest
from s2s.models import build_model
from s2s.objective import build_optimizer, label_smoothed_loss
from s2s.prepare import prepare_corpus
from s2s.runlog import read_metrics
from s2s.sampler import DataDigest, EpochPlan
from s2s.sampler import steps as step_groups
from s2s.shards import read_shard
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID
from s2s.train import train

aten = torch.ops.aten


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad, query, key, value)


# FlopCounterMode has formulas for the CUDA attention kernels only: on a CPU, where
# scaled_dot_product_attention runs its fused CPU kernel, attention would count 0 FLOPs.
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops,
}
HF_BATCH = 64  # sentences per Hugging Face batch
HF_RUNS = ("random", "grouped")  # (d), (e)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_flops_per_s(device: str, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best matmul rate of this machine in ``dtype`` (2048^3, repeated), all cores."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
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


def run_config(data: str, run: Path, model_cfg, workers: int, n_steps: int, args) -> TrainConfig:
    """The settings of a throughput run of ``s2s train`` (also what its epoch plan follows)."""
    return TrainConfig(
        data=data, output=str(run), model=model_cfg, workers=str(workers), use_gpu=args.gpu,
        max_steps=n_steps, max_tokens=args.max_tokens, precision=args.precision,
        log_every=max(n_steps // 4, 1), eval_every=10**9, checkpoint_every=10**9, warmup=n_steps,
    )  # fmt: skip


def timed_steps(cfg: TrainConfig) -> range:
    """The steps (1-based) timed in every s2s run and in the bare loop: from the first log line
    to the last. ``s2s train`` reads its clock (``elapsed_s``) before each step, so the clocks of
    those two lines span the steps from the first to the one before the last."""
    first = cfg.log_every
    last = cfg.max_steps // cfg.log_every * cfg.log_every
    if last <= first:
        raise SystemExit(f"--steps {cfg.max_steps}: too few for a timed window after warm-up")
    return range(first, last)


def plan_groups(cfg: TrainConfig) -> list[list[list[Example]]]:
    """The batches of every step of a run of ``cfg``, one list per step (rank ``r`` of ``W``
    trains on ``group[r::W]``): the epoch plan is a function of the corpus and the settings
    alone, so this is what the workers draw (:func:`ray_train` checks the digest)."""
    manifest = read_manifest(cfg.data)
    plan = EpochPlan(
        cfg.data, manifest["shards"]["train"], cfg.shuffle, cfg.shuffle_buffer, cfg.max_tokens,
        cfg.seed,
    )  # fmt: skip
    per_step = cfg.worker_range()[1] * cfg.update_freq
    groups: list[list[list[Example]]] = []
    for epoch in itertools.count():
        before = len(groups)
        for group in step_groups(plan.batches(epoch), per_step):
            groups.append(group)
            if len(groups) == cfg.max_steps:
                return groups
        if len(groups) == before:
            raise SystemExit(f"an epoch of {cfg.data} holds fewer batches than one step")
    return groups


def target_tokens(batches: list[list[Example]]) -> int:
    """Non-padding target positions: each target and its eos (what the loss counts)."""
    return sum(len(tgt) + 1 for batch in batches for _, tgt in batch)


def sentence_flops(model, device) -> Callable[[int, int], float]:
    """Forward+backward FLOPs of one sentence pair, a function of its source and target lengths.

    Model FLOPs count real tokens only. Scaling a padded batch's count by its non-padding
    fraction would be approximate: sources and targets pad differently, and attention grows
    with the square of the length. A sentence alone has no padding, and its FLOPs (matmuls
    linear in the positions, attention in S^2, T^2 and S*T) are a quadratic polynomial of the
    lengths: FlopCounterMode counts a grid of single-sentence shapes, a least-squares fit gives
    the coefficients, and further counted shapes must match the fit exactly (else this raises:
    a model outside that form). Counted in fp32: the FLOPs do not depend on the precision.
    """

    def count(src_len: int, tgt_len: int) -> float:
        batch = collate([([10] * src_len, [10] * tgt_len)])
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
            logits = model(batch["src"].to(device), batch["tgt_in"].to(device))
            loss, _, n = label_smoothed_loss(logits, batch["tgt_out"].to(device), 0.1)
            (loss / n).backward()
        model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def terms(s: int, t: int) -> list[float]:
        return [1.0, s, t, s * s, t * t, s * t]

    # Six shapes fix the six coefficients; short ones, as an RNN's cost is a Python loop per token.
    grid = [(2, 2), (6, 2), (13, 2), (2, 6), (2, 13), (6, 6)]
    coefs = np.linalg.lstsq(
        np.array([terms(s, t) for s, t in grid]),
        np.array([count(s, t) for s, t in grid]),
        rcond=None,
    )[0]
    for s, t in ((13, 13), (9, 4)):
        fitted, counted = float(np.dot(coefs, terms(s, t))), count(s, t)
        if abs(fitted - counted) > 1e-6 * counted:
            raise RuntimeError(f"FLOPs of ({s}, {t}) counted {counted:.0f}, fitted {fitted:.0f}")
    return lambda s, t: float(np.dot(coefs, terms(s, t)))


def model_flops(flops: Callable[[int, int], float], batches: list[list[Example]]) -> float:
    """FLOPs of the real tokens of ``batches``: every sentence pair counted alone."""
    return sum(flops(len(src), len(tgt)) for batch in batches for src, tgt in batch)


def bare_loop(model, groups, window: range, device, precision: str) -> dict:
    """(a): the same model and batches as (b), one process, no Ray, no DDP; timed over the
    steps of ``window`` (1-based), the steps before it run as warm-up."""
    model.to(device).train()
    optimizer = build_optimizer(model, 1e-3)
    tokens = positions = 0
    for step, group in enumerate(groups[: window.stop - 1], start=1):
        if step == window.start:
            start = time.perf_counter()
        (examples,) = group  # one worker: one batch a step
        batch = collate(examples)
        with autocast(precision, torch.device(device)):
            logits = model(batch["src"].to(device), batch["tgt_in"].to(device))
            loss, _, n = label_smoothed_loss(logits, batch["tgt_out"].to(device), 0.1)
        optimizer.zero_grad()
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as s2s train (clip_norm)
        optimizer.step()
        if step in window:
            tokens += int(n)
            positions += batch["tgt_out"].numel()
    seconds = time.perf_counter() - start
    return {"tok_s": tokens / seconds, "padding": 1 - tokens / positions, "seconds": seconds}


def hf_random_batches(examples, count: int) -> list[list[Example]]:
    """(d): 64 sentences drawn at random per batch."""
    rng = random.Random(0)
    return [[examples[rng.randrange(len(examples))] for _ in range(HF_BATCH)] for _ in range(count)]


def hf_grouped_batches(examples, count: int) -> list[list[Example]]:
    """(e): ``Trainer(group_by_length=True)``'s order (transformers' own function: a random
    permutation, mega-batches of 50 x 64 sorted by source length, longest first), cut into
    batches of 64; then ``count`` of them drawn at random. Taken in order, a short run would
    see only the first mega-batch, sorted longest first: not the epoch's mix of lengths."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [len(src) + 1 for src, _ in examples]  # input_ids with eos, what HF measures
    order = get_length_grouped_indices(
        lengths, HF_BATCH, generator=torch.Generator().manual_seed(0)
    )
    batches = [order[i : i + HF_BATCH] for i in range(0, len(order), HF_BATCH)]
    chosen = random.Random(0).sample(batches, min(count, len(batches)))
    return [[examples[i] for i in batch] for batch in chosen]


def hf_marian(cfg, batches: list[list[Example]], device, precision: str) -> dict:
    """(d)/(e): MarianMTModel of the same dimensions, dropout, embedding scale and precision as
    s2s's model, on ``batches`` (the first 3: warm-up)."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.enc_layers,
        decoder_layers=cfg.dec_layers, encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        activation_function=cfg.activation, max_position_embeddings=512, pad_token_id=PAD_ID,
        eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, scale_embedding=cfg.scale_embedding,
        # s2s's dropout sits on embeddings, sublayer outputs and the FFN hidden layer (Marian's
        # dropout and activation_dropout), its attention dropout on the attention weights.
        dropout=cfg.dropout, activation_dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout, share_encoder_decoder_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MarianMTModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = positions = 0
    for i, examples in enumerate(batches):
        if i == 3:
            start = time.perf_counter()
        batch = collate(examples)
        labels = batch["tgt_out"].masked_fill(batch["tgt_out"] == PAD_ID, -100).to(device)
        with autocast(precision, torch.device(device)):
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


def ray_train(cfg: TrainConfig, groups, flops) -> dict:
    """(b)/(c): s2s on Ray Train. Tokens/s: every rank's non-padding target tokens of the timed
    steps, summed, over the run's clock across those steps (``elapsed_s`` of its log lines: the
    slowest rank's, agreed by all, to 0.1 s). The ranks' batches come from the epoch plan
    (``groups``), checked against the digest of what the run trained on."""
    shutil.rmtree(cfg.output, ignore_errors=True)
    # The defaults: 1 CPU reserved per worker, the node's cores shared by its workers.
    with PeakSampler(lambda: largest_rss("RayTrainWorker")) as memory:
        train(cfg)
    lines = read_metrics(cfg.output)
    digest = DataDigest()
    for group in groups:
        digest.update(group)
    trained = [m["data_digest"] for m in lines if "data_digest" in m][-1]
    if trained != digest.value:
        raise RuntimeError("the run trained on other batches than its epoch plan gives here")
    window = timed_steps(cfg)
    clock = {m["step"]: m["elapsed_s"] for m in lines if "tgt_tokens_per_s" in m}
    seconds = clock[window.stop] - clock[window.start]
    timed = groups[window.start - 1 : window.stop - 1]
    world = cfg.worker_range()[1]
    per_rank = [target_tokens([b for g in timed for b in g[r::world]]) for r in range(world)]
    work = model_flops(flops, [b for g in timed for b in g])
    return {
        "tok_s": sum(per_rank) / seconds, "rank_tokens": per_rank, "seconds": seconds,
        "flops_s": work / seconds, "rss": memory.peak,
    }  # fmt: skip


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
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--dropout", type=float, help="for every run; default: the preset's")
    parser.add_argument("--part", choices=["all", "throughput", "checkpoints"], default="all")
    parser.add_argument("--checkpoint-steps", type=int, default=80)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--workdir", default="bench-output/train")
    args = parser.parse_args()
    work = Path(args.workdir)
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
        throughput(data, work, presets, vocab, args)
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


def throughput(data, work, presets, vocab, args) -> None:
    """(a)-(e) for each preset, printed as a table."""
    device = "cuda" if args.gpu else "cpu"
    precision = resolve_precision(args.precision, torch.device(device))
    # As s2s train sets its device (TF32 matmuls in fp32, no cuDNN attention), for the runs in
    # this process too; no effect on a CPU.
    if precision == "fp32":
        enable_tf32(torch.device(device))
    shape_stable_attention(torch.device(device))
    rates = {name: matmul_flops_per_s(device, dtype) for name, dtype in DTYPES.items()}
    examples = load_examples(data)
    rows = []
    for preset in presets:
        dropout = {} if args.dropout is None else {"dropout": args.dropout}
        cfg = model_preset(preset, {"vocab_size": vocab, **dropout})
        one_cfg = run_config(data, work / f"{preset}-1", cfg, 1, args.steps, args)
        two_cfg = run_config(data, work / f"{preset}-2", cfg, 2, args.steps, args)
        one_groups, two_groups = plan_groups(one_cfg), plan_groups(two_cfg)
        window = timed_steps(one_cfg)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        flops = sentence_flops(model, device)
        bare = bare_loop(model, one_groups, window, device, precision)
        timed = [b for g in one_groups[window.start - 1 : window.stop - 1] for b in g]
        bare["flops_s"] = model_flops(flops, timed) / bare["seconds"]
        one = ray_train(one_cfg, one_groups, flops)
        two = ray_train(two_cfg, two_groups, flops)
        hf = {}
        if cfg.family == "transformer":
            for name, batches in zip(HF_RUNS, (hf_random_batches, hf_grouped_batches)):
                hf[name] = hf_marian(cfg, batches(examples, args.steps + 3), device, precision)
        rows.append((preset, bare, one, two, hf))

    peak = rates[precision]
    print(
        f"\nmachine: {os.cpu_count()} cores ({device}), matmul 2048^3: fp32 "
        f"{rates['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {rates['bf16'] / 1e9:,.0f} GFLOP/s; "
        f"training in {precision} (--precision {args.precision}): MFU against the {precision} rate"
    )
    print(
        f"timed: steps {window.start}-{window.stop - 1} of {args.steps} for (a)-(c) (the same "
        f"batches in (a) and (b)); {args.steps} batches of {HF_BATCH} after 3 warm-up for (d), (e)"
    )
    print(
        "| model | (a) bare loop | (b) Ray 1 worker | (c) Ray 2 workers | (d) HF random "
        "| (e) HF length-grouped | (b)/(a) | (b)/(d) | (b)/(e) | padding (a) / (d) / (e) "
        "| MFU (a) / (b) / (c) | peak RSS/worker 1w / 2w (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for preset, bare, one, two, hf in rows:
        runs = [hf.get(name) for name in HF_RUNS]
        hf_rates = [f"{r['tok_s']:,.0f}" if r else "-" for r in runs]
        vs_hf = [f"{one['tok_s'] / r['tok_s']:.2f}x" if r else "-" for r in runs]
        pads = [f"{r['padding']:.0%}" if r else "-" for r in (bare, *runs)]
        mfu = " / ".join(f"{r['flops_s'] / peak:.0%}" for r in (bare, one, two))
        print(
            f"| {preset} | {bare['tok_s']:,.0f} | {one['tok_s']:,.0f} | {two['tok_s']:,.0f} "
            f"| {' | '.join(hf_rates)} | {one['tok_s'] / bare['tok_s']:.2f}x | {' | '.join(vs_hf)} "
            f"| {' / '.join(pads)} | {mfu} "
            f"| {one['rss'] / 2**20:,.0f} / {two['rss'] / 2**20:,.0f} |"
        )
    print("\ntokens/s = non-padding target tokens per second; (c): the sum over its ranks")
    print("MFU = model FLOPs of the real tokens (FlopCounterMode, forward+backward) per second")
    for preset, bare, one, two, _ in rows:
        ranks = ", ".join(f"rank {r} {n:,}" for r, n in enumerate(two["rank_tokens"]))
        gflops = " / ".join(f"{r['flops_s'] / 1e9:,.1f}" for r in (bare, one, two))
        print(
            f"  {preset}: (c) {ranks} target tokens in {two['seconds']:.1f} s; "
            f"model GFLOP/s (a) / (b) / (c): {gflops}"
        )


if __name__ == "__main__":
    main()
