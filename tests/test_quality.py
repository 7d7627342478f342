"""Translation quality on real data, fast enough for every CI run.

A small Transformer trained by ``s2s train`` (Ray Train, the benchmark recipe's linear schedule) on
a slice of the machine's real en->de gettext pairs must translate held-out pairs far above chance
(chance: its own outputs scored against other sentences' references). A regression anywhere
between prepare and beam search shows up here as lost BLEU. The same model then checks that the
batch translation job scores exactly what the evaluation scores.
"""

import json
from pathlib import Path

import pytest
import sacrebleu

from s2s.config import EvaluateConfig, PrepareConfig, TrainConfig, TranslateConfig, model_preset
from s2s.evaluate import evaluate, load_pairs
from s2s.prepare import prepare_corpus
from s2s.train import train
from s2s.translate import translate

PAIRS = 24_000  # of the machine's gettext pairs; hash-carved valid/test sets are in-domain
# Measured on 2 cores: 13.3 BLEU after 600 steps (~60 s of training); chance scores ~1.
STEPS = 600
BLEU_FLOOR = 9.0
SMALL = {"d_model": 128, "ffn_dim": 512, "heads": 4, "enc_layers": 2, "dec_layers": 2, "dropout": 0}


@pytest.fixture(scope="module")
def corpus(ray_local, tmp_path_factory, gettext_pairs):
    raw = tmp_path_factory.mktemp("quality-raw") / "pairs.tsv"
    raw.write_text("".join(f"{s}\t{t}\n" for s, t in gettext_pairs[:PAIRS]))
    out = str(tmp_path_factory.mktemp("quality-corpus") / "prepared")
    prepare_corpus(
        PrepareConfig(inputs=[str(raw)], output=out, vocab_size=2000, valid_size=200, test_size=500)
    )
    return out


@pytest.fixture(scope="module")
def model(corpus, tmp_path_factory) -> str:
    run = str(tmp_path_factory.mktemp("quality-run") / "run")
    result = train(
        TrainConfig(
            data=corpus, output=run, model=model_preset("transformer-small", SMALL),
            max_steps=STEPS, max_tokens=1500, lr=3e-3,
            warmup=50, schedule="linear", eval_every=10**6, checkpoint_every=10**6,
            eval_sentences=100, log_every=100,
        )
    )  # fmt: skip
    return result.checkpoint


@pytest.fixture(scope="module")
def evaluated(model, corpus, tmp_path_factory) -> dict:
    out = str(tmp_path_factory.mktemp("quality-eval"))
    report = evaluate(
        EvaluateConfig(checkpoint=model, data=corpus, split="test", beam=4, output=out)
    )
    report["hypotheses"] = Path(out, "hypotheses.txt").read_text().splitlines()
    return report


def test_small_model_translates_held_out_real_pairs_far_above_chance(evaluated, corpus):
    sources, references = load_pairs(corpus, "test")
    assert evaluated["sentences"] == len(sources) >= 450
    # Chance: the same outputs, each scored against another sentence's reference.
    shifted = evaluated["hypotheses"][1:] + evaluated["hypotheses"][:1]
    chance = sacrebleu.corpus_bleu(shifted, [references]).score
    assert evaluated["bleu"] >= BLEU_FLOOR, evaluated["bleu"]
    assert evaluated["bleu"] >= 3 * chance, (evaluated["bleu"], chance)


def test_translate_job_scores_what_evaluate_scores(model, corpus, evaluated, tmp_path):
    """The test sources as a JSONL document set through ``s2s translate``: same BLEU (±0.2)."""
    sources, references = load_pairs(corpus, "test")
    docs = tmp_path / "docs" / "test.jsonl"
    docs.parent.mkdir()
    docs.write_text(
        "".join(json.dumps({"id": str(i), "text": s}) + "\n" for i, s in enumerate(sources))
    )
    translate(
        TranslateConfig(
            checkpoint=model, input=str(docs), output=str(tmp_path / "out"), beam=4,
            cpus_per_actor=0.5, torch_threads=2,
        )
    )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(i) for i in range(len(sources))]
    job = [r["translation"] for r in rows]
    assert abs(sacrebleu.corpus_bleu(job, [references]).score - evaluated["bleu"]) <= 0.2
    # Batches differ (the job's pieces vs the whole split), the outputs hardly ever.
    same = sum(a == b for a, b in zip(job, evaluated["hypotheses"]))
    assert same >= 0.98 * len(sources), f"{len(sources) - same} translations differ"
