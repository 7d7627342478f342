"""Benchmark: translation quality after a fixed wall-clock budget, s2s against Hugging Face.

On the shared English->German gettext corpus (its train/valid/test splits as given; on a clean
clone one built from this machine's catalogs: jobs/benchcorpus.py), one run:

  * s2s ``rnn-small`` (LSTM + Bahdanau), ``gru-luong`` and ``transformer-small``, each trained by
    ``s2s train`` for ``--budget`` minutes of wall-clock (the recipes in jobs/configs/quality/);
  * the baseline: Hugging Face ``MarianMTModel`` with transformer-small's dimensions, trained from
    scratch the way an HF user would (random-order batches of 64 sentences padded per batch,
    AdamW, warm-up, label smoothing 0.1), same SentencePiece vocabulary, same budget.

Every model is scored on the whole test split with beam 4 (sacreBLEU BLEU and chrF, signatures
printed, and placeholder fidelity: s2s.placeholders); for s2s models with the length penalty
chosen on the valid split, also as the average of their last checkpoints, and through ``s2s
translate`` (which must score what ``s2s evaluate`` scores). While training, each is decoded
greedily on the first validation sentences every few minutes: those points are the learning
curves (BLEU against wall-clock) drawn into ``--plot``. Results also go to ``results.json``.

    python jobs/bench_quality.py [--budget 20] [--models transformer-small,hf-marian,...]
    python jobs/bench_quality.py --score-only     # score the trained s2s runs again
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from benchcorpus import bench_corpus

from s2s import storage
from s2s.batching import collate
from s2s.checkpoint import average_checkpoints, list_checkpoints
from s2s.config import (
    EvaluateConfig,
    PrepareConfig,
    TranslateConfig,
    model_preset,
    train_config,
)
from s2s.evaluate import evaluate, load_pairs
from s2s.manifest import read_manifest
from s2s.placeholders import fidelity
from s2s.prepare import prepare_corpus
from s2s.runlog import read_metrics
from s2s.scoring import score
from s2s.shards import read_shard
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from s2s.train import train
from s2s.translate import translate

ROOT = Path(__file__).resolve().parent
RECIPES = ROOT / "configs" / "quality"  # one `s2s train --config` file per preset
MODELS = ["rnn-small", "gru-luong", "transformer-small", "hf-marian"]
AVERAGE_LAST = 3  # checkpoints averaged at the end of each s2s run (the recipes keep 3)
PENALTIES = (0.6, 1.0, 1.4)  # GNMT length penalties tried on the valid split (beam 4)


def prepare(corpus: Path, output: str) -> str:
    """The corpus' own splits: train carved by nothing, valid and test given explicitly."""
    if not (corpus / "train.tsv.gz").exists():
        raise SystemExit(f"{corpus}/train.tsv.gz not found (see jobs/benchcorpus.py)")
    if not storage.exists(storage.join(output, "manifest.json")):
        prepare_corpus(
            PrepareConfig(
                inputs=[str(corpus / "train.tsv.gz")],
                valid=[str(corpus / "valid.tsv.gz")],
                test=[str(corpus / "test.tsv.gz")],
                output=output,
                overwrite=True,
            )
        )
    return output


def run_s2s(preset: str, data: str, test: str, work: Path, budget: float, train_it: bool) -> dict:
    """Train ``preset`` for ``budget`` minutes with its recipe (unless ``train_it`` is False: then
    score the run already in ``work``), then score it."""
    run = work / preset
    if train_it:
        shutil.rmtree(run, ignore_errors=True)
        cfg = train_config(yaml.safe_load((RECIPES / f"{preset}.yaml").read_text()))
        # One worker, the defaults: it computes on all the cores.
        cfg = dataclasses.replace(cfg, data=data, output=str(run), max_time_min=budget)
        train(cfg)
    metrics = read_metrics(str(run))
    logged = [m for m in metrics if "tgt_tokens_per_s" in m][1:]  # the first window starts up
    reports = [m for m in metrics if "bleu" in m]
    row = {
        "model": preset,
        "steps": reports[-1]["step"],
        "train_s": reports[-1]["elapsed_s"],
        "epochs": _epochs(reports[-1]["tgt_tokens_seen"], data),
        "tok_s": round(sum(m["tgt_tokens_per_s"] for m in logged) / max(len(logged), 1)),
        "curve": [(m["elapsed_s"], m["bleu"]) for m in reports],
    }
    return row | score_s2s(run, data, test, work)


def score_s2s(run: Path, data: str, test: str, work: Path) -> dict:
    """The length penalty is chosen on (the first 1,000 pairs of) the valid split; then the test
    split is scored: the last checkpoint, the average of the last ones, and the translate job."""
    checkpoints = [uri for _, uri in list_checkpoints(str(run))]
    last = checkpoints[-1]
    tuning = {lp: _evaluate(last, data, "valid", lp, limit=1000)["bleu"] for lp in PENALTIES}
    penalty = max(tuning, key=tuning.get)
    scores = {"length_penalty": penalty, "valid_bleu_by_length_penalty": tuning}
    scores["last"] = _evaluate(last, test, "test", penalty)
    scores["translate_job"] = translate_check(last, test, work, penalty)
    if len(checkpoints) >= 2:
        count = min(AVERAGE_LAST, len(checkpoints))
        average_checkpoints(str(run), count, str(run / "averaged"))
        scores["averaged"] = _evaluate(str(run / "averaged"), test, "test", penalty)
        scores["averaged"]["checkpoints"] = count
    return scores


def translate_check(checkpoint: str, test: str, work: Path, length_penalty: float) -> dict:
    """``s2s translate`` over the test sources as a JSONL document set (one per sentence), scored
    like ``s2s evaluate``: the batch job and the evaluation must not drift apart."""
    sources, references = load_pairs(test, "test")
    docs = work / "test-docs" / "test.jsonl"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(
        "".join(json.dumps({"id": str(i), "text": s}, ensure_ascii=False) + "\n"
                for i, s in enumerate(sources))
    )  # fmt: skip
    out = work / "test-translations"
    started = time.perf_counter()
    translate(
        TranslateConfig(
            checkpoint=checkpoint, input=str(docs), output=str(out), beam=4, overwrite=True,
            length_penalty=length_penalty, cpus_per_actor=1, torch_threads=os.cpu_count() or 2,
        )
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    by_id = {row["id"]: row["translation"] or "" for row in rows}
    report = score([by_id[str(i)] for i in range(len(sources))], references)
    report.update(documents=len(rows), seconds=round(time.perf_counter() - started, 1))
    return report


def _epochs(tokens_seen: int, data: str) -> float:
    """Epochs seen: target tokens trained on / target tokens (with eos) of the training split."""
    manifest = read_manifest(data)
    per_epoch = manifest["lengths"]["train"]["tgt"]["tokens"] + manifest["counts"]["kept"]["train"]
    return round(tokens_seen / per_epoch, 2)


def _evaluate(
    checkpoint: str, data: str, split: str, length_penalty: float, limit: int = 0
) -> dict:
    cfg = EvaluateConfig(
        checkpoint=checkpoint, data=data, split=split, limit=limit, beam=4,
        length_penalty=length_penalty, torch_threads=os.cpu_count() or 2,
    )  # fmt: skip
    report = evaluate(cfg)
    keys = ("bleu", "chrf", "signature", "placeholders", "sentences", "segments", "seconds")
    return {k: report[k] for k in keys}


class MarianBaseline:
    """Hugging Face ``MarianMTModel`` from scratch, trained as an HF user would write it."""

    BATCH = 64  # sentences per batch, random order, padded to the batch's longest
    LR, WARMUP = 5e-4, 500  # AdamW, linear warm-up, then constant (the budget sets the end)
    EVAL_EVERY_S = 120.0  # the learning curve: greedy BLEU on the validation subset

    def __init__(self, data: str, valid: tuple[list[str], list[str]]) -> None:
        from transformers import MarianConfig, MarianMTModel

        manifest = read_manifest(data)
        self.tokenizer = Tokenizer(
            storage.read_bytes(storage.join(data, manifest["tokenizer"]["file"]))
        )
        dims = model_preset("transformer-small", {"vocab_size": self.tokenizer.vocab_size})
        config = MarianConfig(
            vocab_size=dims.vocab_size, d_model=dims.d_model, encoder_layers=dims.enc_layers,
            decoder_layers=dims.dec_layers, encoder_attention_heads=dims.heads,
            decoder_attention_heads=dims.heads, encoder_ffn_dim=dims.ffn_dim,
            decoder_ffn_dim=dims.ffn_dim, activation_function="relu", dropout=dims.dropout,
            max_position_embeddings=512, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
            bos_token_id=BOS_ID, decoder_start_token_id=BOS_ID, forced_eos_token_id=EOS_ID,
            share_encoder_decoder_embeddings=True,
        )  # fmt: skip
        torch.manual_seed(1)
        self.model = MarianMTModel(config)
        self.pairs = []
        for shard in manifest["shards"]["train"]:
            table = read_shard(data, shard["path"], ["src_ids", "tgt_ids"])
            self.pairs += zip(table["src_ids"].to_pylist(), table["tgt_ids"].to_pylist())
        self.valid = valid

    def train(self, budget_min: float) -> dict:
        from transformers import get_constant_schedule_with_warmup

        model, rng = self.model.train(), random.Random(1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.LR, weight_decay=0.01)
        schedule = get_constant_schedule_with_warmup(optimizer, self.WARMUP)
        order: list[int] = []
        step = tokens = positions = 0
        curve, started, next_eval = [], time.perf_counter(), self.EVAL_EVERY_S
        while (elapsed := time.perf_counter() - started) < 60 * budget_min:
            if elapsed >= next_eval:
                curve.append((round(elapsed, 1), self.score(*self.valid, beam=1)["bleu"]))
                next_eval += self.EVAL_EVERY_S
                model.train()
            if len(order) < self.BATCH:  # a new epoch: a new random order (DataLoader shuffle)
                order = list(range(len(self.pairs)))
                rng.shuffle(order)
            batch = collate([self.pairs[order.pop()] for _ in range(self.BATCH)])
            logits = model(
                input_ids=batch["src"],
                attention_mask=batch["src"] != PAD_ID,
                decoder_input_ids=batch["tgt_in"],
            ).logits
            # Seq2SeqTrainer's label_smoothing_factor=0.1, on the non-padding positions.
            loss = F.cross_entropy(
                logits.flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=PAD_ID,
                label_smoothing=0.1,
            )  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            tokens += int((batch["tgt_out"] != PAD_ID).sum())
            positions += batch["tgt_out"].numel()
        curve.append(
            (round(time.perf_counter() - started, 1), self.score(*self.valid, beam=1)["bleu"])
        )
        return {
            "model": "hf-marian",
            "steps": step,
            "epochs": round(step * self.BATCH / len(self.pairs), 2),
            "tok_s": round(tokens / (60 * budget_min)),
            "padding": round(1 - tokens / positions, 3),
            "curve": curve,
        }

    @torch.inference_mode()
    def score(self, sources: list[str], references: list[str], beam: int) -> dict:
        """Decode with ``generate`` (length-sorted batches, as s2s does) and score."""
        model = self.model.eval()
        started = time.perf_counter()
        ids = [s + [EOS_ID] for s in self.tokenizer.encode(sources)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        hypotheses = [""] * len(ids)
        size = max(1, 64 // beam)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            width = max(len(ids[i]) for i in chunk)
            src = torch.full((len(chunk), width), PAD_ID)
            for row, i in enumerate(chunk):
                src[row, : len(ids[i])] = torch.tensor(ids[i])
            out = model.generate(
                input_ids=src, attention_mask=src != PAD_ID, num_beams=beam,
                max_new_tokens=int(1.5 * width + 10), length_penalty=1.0, do_sample=False,
            )  # fmt: skip
            texts = self.tokenizer.decode(
                [[t for t in row if t not in (PAD_ID, BOS_ID, EOS_ID)] for row in out.tolist()]
            )
            for i, text in zip(chunk, texts):
                hypotheses[i] = text
        report = score(hypotheses, references)
        kept = fidelity(sources, hypotheses)  # as s2s evaluate reports it
        report["placeholders"] = {"sentences": kept["sentences"], "fidelity": kept["fidelity"]}
        report.update(sentences=len(sources), seconds=round(time.perf_counter() - started, 1))
        return report


def run_hf(data: str, test: str, budget: float) -> dict:
    valid = load_pairs(data, "valid", limit=500)
    baseline = MarianBaseline(data, valid)
    row = baseline.train(budget)
    row["last"] = baseline.score(*load_pairs(test, "test"), beam=4)
    return row


def plot(rows: list[dict], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        minutes = [t / 60 for t, _ in row["curve"]]
        axis.plot(minutes, [b for _, b in row["curve"]], marker="o", markersize=3,
                  label=f"{row['model']} (test {row['last']['bleu']:.1f})")  # fmt: skip
    axis.set(xlabel=f"training wall-clock (minutes, {os.cpu_count()} CPU cores)",
             ylabel="validation BLEU (greedy; s2s 300, HF 500 sentences)",
             xlim=(0, budget))  # fmt: skip
    axis.grid(alpha=0.3)
    axis.legend(title="model (test BLEU, beam 4)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _kept(report: dict) -> str:
    """Placeholder fidelity, % of the test sentences that hold any ("-" in older results)."""
    share = report.get("placeholders", {}).get("fidelity")
    return "-" if share is None else f"{share:.1f}%"


def table(rows: list[dict], budget: float) -> str:
    lines = [
        f"| model, {budget:g} min | steps | epochs | tgt tokens/s | length penalty | test BLEU "
        "| chrF | placeholders kept | BLEU, averaged checkpoints | BLEU via `s2s translate` |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        averaged, job = row.get("averaged"), row.get("translate_job")
        lines.append(
            f"| {row['model']} | {row['steps']:,} | {row['epochs']:.2f} | {row['tok_s']:,} "
            f"| {row.get('length_penalty', 1.0)} | **{row['last']['bleu']:.1f}** "
            f"| {row['last']['chrf']:.1f} | {_kept(row['last'])} | "
            + (f"{averaged['bleu']:.1f}" if averaged else "-")
            + (f" | {job['bleu']:.2f} (evaluate {row['last']['bleu']:.2f}) |" if job else " | - |")
        )
    signature = rows[0]["last"]["signature"]
    lines.append(f"\nBLEU {signature['bleu']}\nchrF {signature['chrf']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0, help="minutes of training per model")
    parser.add_argument("--models", default=",".join(MODELS), help=f"of {','.join(MODELS)}")
    parser.add_argument(
        "--corpus",
        help="a directory of train/valid/test.tsv.gz; default: the shared gettext corpus where "
        "it is there, else one built from this machine's catalogs (jobs/benchcorpus.py)",
    )
    parser.add_argument("--workdir", default="bench-output/quality")
    parser.add_argument("--plot", default="bench-output/quality/quality.png")
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="score the s2s runs in --workdir again without training (after a change to "
        "decoding or evaluation); the baseline's row stays as measured",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.workdir).resolve()
    corpus = Path(args.corpus) if args.corpus else bench_corpus(work)
    print(f"corpus: {corpus}", flush=True)
    data = prepare(corpus, str(work / "prepared"))
    test = str(corpus / "test.tsv.gz")  # the split as given: all of its pairs, unfiltered
    results = work / "results.json"
    done = {r["model"]: r for r in json.loads(results.read_text())} if results.exists() else {}
    for model in args.models.split(","):
        if model not in MODELS:
            raise SystemExit(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        if model == "hf-marian":
            if args.score_only:
                continue  # its weights are not kept: its row stays as measured
            row = run_hf(data, test, args.budget)
        else:
            row = run_s2s(model, data, test, work, args.budget, train_it=not args.score_only)
        row["budget_min"] = args.budget
        done[model] = row
        results.write_text(json.dumps(list(done.values()), indent=1))  # after each model
    rows = [done[m] for m in MODELS if m in done]
    plot(rows, Path(args.plot), args.budget)
    print(f"\nmachine: {os.cpu_count()} cores; test = {test}")
    print(table(rows, args.budget))
    print(f"\nlearning curves: {args.plot}; all numbers: {results}")


if __name__ == "__main__":
    main()
