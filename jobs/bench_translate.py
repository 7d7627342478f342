"""Benchmark: translation speed of s2s against Hugging Face and CTranslate2, and of the Ray Data
job against its own engine.

Measured side by side in one run on this machine, on the same real English sentences (the
shared corpus' test split where it is there, else one built here: jobs/benchcorpus.py;
SentencePiece 8k), in the same 64-sentence batches (sorted by length,
so every engine sees identical padding), with every output forced to the same length (eos
banned until then; the length of every output of every run is checked, per engine and setting,
and a mismatch stops the benchmark), greedy and beam 4, for ``transformer-small`` and
``transformer-base`` dimensions (random weights: speed does not depend on what the weights say
once lengths are forced). Every engine is timed alike: one warm-up run, then the best of
``--repeats`` runs:

  s2s          s2s's PyTorch engine (``s2s.search``: batched beam search, KV cache)
  s2s-ct2      the same s2s checkpoint after ``s2s export --format ctranslate2`` (fp32, int8)
  hf           ``MarianMTModel.generate`` with identical dimensions
  ct2          CTranslate2 running that Marian model after its converter (fp32, int8)

Then an OPUS-MT-shaped Hugging Face Marian model (d 512, 6+6 layers, swish, a final logits bias,
Marian's vocabulary layout) imported with ``s2s import --from hf``: s2s's engines on the import
against ``generate`` and CTranslate2's converter on the same weights.

Then the whole ``s2s translate`` job (Ray Data, one translator actor, real documents of several
sentences each) against the engine alone (``Translator.translate_sentences``) on the same
sentences, and the translator actor's peak private memory on one 5 MB document.

    python jobs/bench_translate.py [--sentences 256] [--length 24] [--repeats 2]
        [--parts engines,imported,job,bigdoc]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time
from functools import partial
from pathlib import Path

import torch
from benchcorpus import bench_corpus
from procmem import PeakSampler, largest_rss

from s2s.checkpoint import load_checkpoint, save_checkpoint
from s2s.config import TranslateConfig, model_preset
from s2s.engines.ctranslate2 import export_ctranslate2
from s2s.marian import import_marian
from s2s.models import build_model
from s2s.search import beam_search, greedy_search
from s2s.segment import split_document
from s2s.tokenizer import EOS_ID, PAD_ID, Tokenizer, train_tokenizer
from s2s.translate import translate
from s2s.translator import Translator

THREADS = os.cpu_count() or 1


def read_tsv(corpus: Path, name: str, limit: int) -> list[tuple[str, str]]:
    pairs = []
    with gzip.open(corpus / name, "rt", encoding="utf-8") as f:
        for line in f:
            src, _, tgt = line.rstrip("\n").partition("\t")
            pairs.append((src, tgt))
            if len(pairs) >= limit:
                break
    return pairs


def batches_of(ids: list[list[int]], size: int = 64) -> list[list[list[int]]]:
    ordered = sorted(ids, key=len)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def pad(
    batch: list[list[int]], pad_id: int = PAD_ID, eos_id: int = EOS_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) ids with eos, right-padded, and the attention mask."""
    width = max(len(s) for s in batch) + 1
    src = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for i, s in enumerate(batch):
        src[i, : len(s) + 1] = torch.tensor(s + [eos_id])
    return src, src != pad_id


def timed(fn, repeats: int) -> tuple[float, list[list[int]]]:
    """Best wall time of ``repeats`` runs after one warm-up run, and every run's output lengths.
    Every engine is timed with the same ``repeats``: a best of fewer runs would be slower."""
    lengths = [fn()]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        lengths.append(fn())
        best = min(best, time.perf_counter() - start)
    return best, lengths


def check_lengths(where: str, runs: list[list[int]], sentences: int, length: int) -> None:
    """Every output of every run is ``length`` tokens (eos excluded): the engines are compared on
    equal work only if forcing the length worked in each of them. Raises, naming the outputs."""
    for run in runs:
        wrong = sorted({n for n in run if n != length})
        if len(run) != sentences or wrong:
            raise RuntimeError(
                f"{where}: {len(run)} outputs for {sentences} sentences, lengths other than the "
                f"forced {length}: {wrong}"
            )


def marian_model(cfg, vocab_size: int):
    """A Marian model over our vocabulary plus Marian's own pad token at the end (id
    ``vocab_size``), which also starts its decoder: what Marian checkpoints look like and what
    CTranslate2's Marian converter expects."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab_size + 1, d_model=cfg.d_model, encoder_layers=cfg.enc_layers,
        decoder_layers=cfg.dec_layers, encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        activation_function="relu", max_position_embeddings=512, pad_token_id=vocab_size,
        eos_token_id=EOS_ID, decoder_start_token_id=vocab_size, forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True, normalize_before=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return MarianMTModel(config).eval()


def convert_marian(model, tokenizer_model: Path, out: Path) -> Path:
    """Save the Marian model with a tokenizer made from our SentencePiece model, convert it
    with CTranslate2's Transformers converter (what ``ct2-transformers-converter`` runs)."""
    import ctranslate2
    import sentencepiece as spm

    hf_dir = out / "hf"
    model.save_pretrained(hf_dir)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    vocab = {sp.id_to_piece(i): i for i in range(1, sp.get_piece_size())}
    vocab |= {"<blank>": 0, "<pad>": sp.get_piece_size()}  # Marian's pad is its last token
    (hf_dir / "vocab.json").write_text(json.dumps(vocab))
    for name in ("source.spm", "target.spm"):
        shutil.copy(tokenizer_model, hf_dir / name)
    (hf_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "MarianTokenizer", "source_lang": "en", "target_lang": "de"})
    )
    ct2_dir = out / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(ct2_dir), force=True)
    return ct2_dir


def run_s2s(model, batches, beam: int, length: int) -> list[int]:
    """Output tokens per sentence (no eos)."""
    lengths = []
    for batch in batches:
        src, _ = pad(batch)
        if beam == 1:
            lengths += map(len, greedy_search(model, src, 0, length, min_len=length))
        else:
            hyps = beam_search(model, src, beam, 0, length, min_len=length)
            lengths += (len(h[0].tokens) for h in hyps)
    return lengths


@torch.inference_mode()
def run_hf(marian, batches, beam: int, length: int, pad_id=PAD_ID, eos_id=EOS_ID) -> list[int]:
    """Output tokens per sentence: those after the decoder's start, up to eos (a row that ended
    early is padded after its eos; a pad id generated mid-row is an output token)."""
    lengths = []
    ends = {marian.config.eos_token_id}
    for batch in batches:
        src, mask = pad(batch, pad_id, eos_id)
        out = marian.generate(
            input_ids=src, attention_mask=mask, num_beams=beam, do_sample=False,
            max_new_tokens=length, min_new_tokens=length, early_stopping=False,
        )  # fmt: skip
        for row in out[:, 1:].tolist():
            lengths.append(next((i for i, t in enumerate(row) if t in ends), len(row)))
    return lengths


def run_ct2(translator, piece_batches, beam: int, length: int) -> list[int]:
    """Output tokens per sentence (CTranslate2 leaves the end token out)."""
    lengths = []
    for batch in piece_batches:
        results = translator.translate_batch(
            batch, beam_size=beam, max_decoding_length=length, min_decoding_length=length,
            max_batch_size=64,
        )  # fmt: skip
        lengths += (len(r.hypotheses[0]) for r in results)
    return lengths


def engine_table(args, tokenizer: Tokenizer, proto_path: Path, sentences: list[str], work: Path):
    import ctranslate2

    batches = batches_of([ids[:64] for ids in tokenizer.encode(sentences)])
    # CTranslate2 takes pieces; s2s's export appends eos itself, the Marian model does not.
    pieces = [[tokenizer.id_to_piece(b) for b in batch] for batch in batches]
    marian_pieces = [[p + ["</s>"] for p in batch] for batch in pieces]
    rows = []
    torch.set_num_threads(THREADS)
    for preset in args.presets.split(","):
        cfg = model_preset(preset, {"vocab_size": tokenizer.vocab_size, "dropout": 0.0})
        torch.manual_seed(0)
        ours = build_model(cfg).eval()
        marian = marian_model(cfg, tokenizer.vocab_size)
        ckpt = work / f"{preset}-checkpoint"
        save_checkpoint(str(ckpt), ours, cfg, proto_path.read_bytes(), {"step": 0})
        ours_ct2 = export_ctranslate2(str(ckpt), str(work / f"{preset}-s2s-ct2"))
        marian_ct2 = convert_marian(marian, proto_path, work / preset)

        def ct2(path, compute_type):
            return ctranslate2.Translator(
                str(path), device="cpu", compute_type=compute_type, intra_threads=THREADS
            )

        for beam in (1, 4):
            engines = {
                "s2s": partial(run_s2s, ours, batches),
                "hf": partial(run_hf, marian, batches),
                "ct2 fp32": partial(run_ct2, ct2(marian_ct2, "float32"), marian_pieces),
                "ct2 int8": partial(run_ct2, ct2(marian_ct2, "int8"), marian_pieces),
                "s2s-ct2 fp32": partial(run_ct2, ct2(ours_ct2, "float32"), pieces),
                "s2s-ct2 int8": partial(run_ct2, ct2(ours_ct2, "int8"), pieces),
            }
            n_tokens = len(sentences) * args.length
            row = {"preset": preset, "beam": beam}
            for name, run in engines.items():
                seconds, runs = timed(partial(run, beam, args.length), args.repeats)
                check_lengths(f"{preset} beam {beam} {name}", runs, len(sentences), args.length)
                row[name] = n_tokens / seconds
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def opus_mt_dir(tokenizer_model: Path, out: Path) -> Path:
    """A Hugging Face Marian directory shaped as OPUS-MT's are: transformer-base dimensions (d 512,
    6+6 layers, 8 heads, ffn 2048), swish, scaled embeddings, a final logits bias, positions up
    to 512, and a joint vocab.json as the Marian converter writes it (eos 0, unk 1, the pieces,
    pad last: pad also starts the decoder), our SentencePiece model on both sides. Random
    weights: lengths are forced, so speed does not depend on them."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i)):
            vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = pad = len(vocab)
    config = MarianConfig(
        vocab_size=len(vocab), decoder_vocab_size=len(vocab), d_model=512, encoder_layers=6,
        decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
        encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
        activation_function="swish", scale_embedding=True, pad_token_id=pad,
        decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    model.final_logits_bias.normal_(0, 0.1)
    model.save_pretrained(out)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    for name in ("source.spm", "target.spm"):
        shutil.copy(tokenizer_model, out / name)
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "MarianTokenizer", "source_lang": "en", "target_lang": "de"})
    )
    return out


def imported_table(args, proto_path: Path, sentences: list[str], work: Path):
    """An OPUS-MT-shaped model imported with ``s2s import --from hf``: s2s's engines on the
    import against ``generate`` and CTranslate2's converter on the same Hugging Face weights."""
    import ctranslate2
    from transformers import MarianMTModel

    hf_dir = opus_mt_dir(proto_path, work / "opus-mt")
    vocab = json.loads((hf_dir / "vocab.json").read_text())
    ckpt = str(work / "opus-mt-imported")
    import_marian(str(hf_dir), ckpt)
    imported = load_checkpoint(ckpt)
    batches = batches_of([ids[:64] for ids in imported.tokenizer.encode(sentences)])
    pieces = [[imported.tokenizer.id_to_piece(b) for b in batch] for batch in batches]
    # Marian's ids and layout for generate: eos 0 appended, pad (the last id) after it.
    marian_batches = [[[vocab[p] for p in s] for s in batch] for batch in pieces]
    marian = MarianMTModel.from_pretrained(hf_dir).eval()
    ct2_dir = work / "opus-mt-ct2"
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(ct2_dir), force=True)
    s2s_ct2 = export_ctranslate2(ckpt, str(work / "opus-mt-s2s-ct2"))

    def ct2(path):
        return ctranslate2.Translator(
            str(path), device="cpu", compute_type="float32", intra_threads=THREADS
        )

    rows = []
    torch.set_num_threads(THREADS)
    for beam in (1, 4):
        engines = {
            "s2s": partial(run_s2s, imported.model, batches),
            "s2s-ct2": partial(run_ct2, ct2(s2s_ct2), pieces),
            "hf": partial(run_hf, marian, marian_batches, pad_id=vocab["<pad>"], eos_id=0),
            "ct2": partial(run_ct2, ct2(ct2_dir), [[p + ["</s>"] for p in b] for b in pieces]),
        }
        row = {"model": "OPUS-MT-shaped import", "beam": beam}
        for name, run in engines.items():
            seconds, runs = timed(partial(run, beam, args.length), args.repeats)
            check_lengths(f"import beam {beam} {name}", runs, len(sentences), args.length)
            row[name] = len(sentences) * args.length / seconds
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def job_vs_engine(args, tokenizer_proto: bytes, pairs, work: Path) -> dict:
    """The Ray Data job on documents against the engine alone on the same sentences."""
    import ray

    cfg_model = model_preset(
        "transformer-small", {"vocab_size": Tokenizer(tokenizer_proto).vocab_size}
    )
    torch.manual_seed(0)
    ckpt = work / "job-checkpoint"
    save_checkpoint(
        str(ckpt), build_model(cfg_model).eval(), cfg_model, tokenizer_proto, {"step": 0}
    )
    sentences = [s for s, _ in pairs]
    docs = work / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    per_doc, per_file = 6, 100
    documents = [
        " ".join(sentences[i : i + 3]) + "\n\n" + " ".join(sentences[i + 3 : i + per_doc])
        for i in range(0, len(sentences) - per_doc + 1, per_doc)
    ]
    for f in range(0, len(documents), per_file):
        with open(docs / f"part-{f // per_file:04d}.jsonl", "w") as out:
            for n, text in enumerate(documents[f : f + per_file]):
                out.write(json.dumps({"id": f + n, "text": text}) + "\n")
    settings = {"checkpoint": str(ckpt), "beam": args.job_beam, "torch_threads": THREADS}
    engine = Translator(TranslateConfig(**settings))
    torch.set_num_threads(THREADS)
    segments = [s for d in documents for s in split_document(d)[0]]
    ray.init(num_cpus=THREADS, logging_level="WARNING")
    cfg = TranslateConfig(
        **settings, input=str(docs), output=str(work / "translations"), overwrite=True,
        concurrency="1", cpus_per_actor=THREADS,
    )  # fmt: skip
    # Alternated and best-of-2: this machine is shared, and a one-off reading drifts by 10%.
    engine_s = job_s = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        engine.translate_sentences(segments)
        engine_s = min(engine_s, time.perf_counter() - start)
        start = time.perf_counter()
        summary = translate(cfg).summary
        job_s = min(job_s, time.perf_counter() - start)
    result = {"documents": len(documents), "sentences": len(segments), "engine_s": engine_s,
              "job_s": job_s, "job_summary": summary}  # fmt: skip
    if "bigdoc" not in args.parts:
        ray.shutdown()
        return result

    big = work / "big"
    big.mkdir(exist_ok=True)
    text = []
    while sum(map(len, text)) < 5_000_000:
        text.append(
            " ".join(sentences[len(text) % len(sentences) : len(text) % len(sentences) + 5])
        )
    (big / "doc.txt").write_text("\n\n".join(text))
    with PeakSampler(lambda: largest_rss("PieceTranslator")) as peak:
        big_summary = translate(
            TranslateConfig(
                checkpoint=str(ckpt), beam=1, torch_threads=THREADS, input=str(big),
                output=str(work / "big-out"), overwrite=True, cpus_per_actor=THREADS,
                max_document_chars=6_000_000, max_len_a=1.0, max_len_b=5,
            )
        ).summary  # fmt: skip
    ray.shutdown()
    return {
        **result, "big_doc_chars": sum(map(len, text)), "big_doc_seconds": big_summary["seconds"],
        "big_doc_sentences": big_summary["sentences"], "actor_peak_rss_mb": peak.peak / 2**20,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=256, help="per engine and setting")
    parser.add_argument("--length", type=int, default=24, help="forced output tokens")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per engine (best)")
    parser.add_argument("--presets", default="transformer-small,transformer-base")
    parser.add_argument("--job-sentences", type=int, default=6000)
    parser.add_argument("--job-beam", type=int, default=4)
    parser.add_argument("--parts", default="engines,imported,job,bigdoc", help="what to measure")
    parser.add_argument("--workdir", default="bench-output/translate")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    corpus = bench_corpus(work)
    print(f"corpus: {corpus}", flush=True)
    train_pairs = read_tsv(corpus, "train.tsv.gz", 60_000)
    proto = train_tokenizer([s for p in train_pairs for s in p], vocab_size=8000)
    proto_path = work / "tokenizer.model"
    proto_path.write_bytes(proto)
    tokenizer = Tokenizer(proto)
    test_pairs = read_tsv(corpus, "test.tsv.gz", 2000)
    sentences = [s for s, _ in test_pairs[: args.sentences]]

    rows = (
        engine_table(args, tokenizer, proto_path, sentences, work)
        if "engines" in args.parts
        else []
    )
    if rows:
        print(f"\nEngines: output tokens/s ({args.sentences} sentences, batches of 64, "
              f"{args.length} tokens forced and checked, {THREADS} threads, best of "
              f"{args.repeats} after 1 warm-up for every engine)\n")  # fmt: skip
        names = ["s2s", "s2s-ct2 fp32", "s2s-ct2 int8", "hf", "ct2 fp32", "ct2 int8"]
        print(
            "| model | search | "
            + " | ".join(names)
            + " | s2s/hf | s2s/ct2 fp32 | s2s-ct2/ct2 fp32 |"
        )
        print("|" + " --- |" * (len(names) + 5))
        for r in rows:
            cells = " | ".join(f"{r[n]:,.0f}" for n in names)
            search = "greedy" if r["beam"] == 1 else f"beam {r['beam']}"
            ratios = [
                r["s2s"] / r["hf"],
                r["s2s"] / r["ct2 fp32"],
                r["s2s-ct2 fp32"] / r["ct2 fp32"],
            ]
            print(
                f"| {r['preset']} | {search} | {cells} | " + " | ".join(f"{x:.2f}x" for x in ratios)
            )

    if "imported" in args.parts:
        imported = imported_table(args, proto_path, sentences, work)
        print(f"\nImported OPUS-MT-shaped model (d 512, 6+6 layers, swish; output tokens/s, "
              f"{args.length} tokens forced and checked, {THREADS} threads, best of "
              f"{args.repeats} after 1 warm-up for every engine)\n")  # fmt: skip
        names = ["s2s", "s2s-ct2", "hf", "ct2"]
        print("| model | search | " + " | ".join(names) + " | s2s / hf | s2s-ct2 / ct2 |")
        print("|" + " --- |" * (len(names) + 4))
        for r in imported:
            cells = " | ".join(f"{r[n]:,.0f}" for n in names)
            search = "greedy" if r["beam"] == 1 else f"beam {r['beam']}"
            print(f"| {r['model']} | {search} | {cells} | {r['s2s'] / r['hf']:.2f}x | "
                  f"{r['s2s-ct2'] / r['ct2']:.2f}x |")  # fmt: skip

    if "job" in args.parts:
        # Unseen by the tokenizer (test, valid), then training pairs beyond its sample.
        job_pairs = read_tsv(corpus, "test.tsv.gz", 2000) + read_tsv(corpus, "valid.tsv.gz", 2000)
        job_pairs += read_tsv(corpus, "train.tsv.gz", 62_000)[60_000:]
        job_pairs = job_pairs[: args.job_sentences]
        result = job_vs_engine(args, proto, job_pairs, work)
        print(f"\nRay Data job vs engine alone ({result['documents']} documents, "
              f"{result['sentences']} sentences, beam {args.job_beam}):")  # fmt: skip
        print(f"  engine alone {result['engine_s']:.1f} s, job {result['job_s']:.1f} s: "
              f"job/engine speed {result['engine_s'] / result['job_s']:.2f}x")  # fmt: skip
        if "bigdoc" in args.parts:
            print(f"  5 MB document ({result['big_doc_chars']:,} chars, "
                  f"{result['big_doc_sentences']:,} sentences, greedy): "
                  f"{result['big_doc_seconds']:.0f} s, actor peak RSS "
                  f"{result['actor_peak_rss_mb']:.0f} MB")  # fmt: skip
        (work / "job.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
