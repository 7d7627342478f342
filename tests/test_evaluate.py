"""s2s evaluate: sacreBLEU scores of exactly what the engine outputs, on a TSV or a prepared
split, through the library and the command line."""

import json

import pytest
import sacrebleu

from s2s.cli import main
from s2s.config import ConfigError, EvaluateConfig, PrepareConfig
from s2s.evaluate import evaluate
from s2s.manifest import read_manifest
from s2s.placeholders import fidelity
from s2s.prepare import prepare_corpus
from s2s.scoring import score
from s2s.shards import read_shard
from s2s.translator import Translator


@pytest.fixture(scope="module")
def pairs(gettext_pairs):
    return gettext_pairs[4000:4060]  # not in the toy model's training slice


def test_score_is_sacrebleus_corpus_bleu_and_chrf_with_signatures():
    hypotheses = ["the cat sat on the mat", "a dog barked loudly", "hello"]
    references = ["the cat sat on a mat", "the dog barked loudly", "hello world"]
    report = score(hypotheses, references)
    assert report["bleu"] == round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)
    assert report["chrf"] == round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2)
    assert report["signature"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert report["signature"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    assert score(references, references)["bleu"] == 100.0


def test_scores_are_those_of_the_engines_outputs(toy_checkpoint, pairs, tmp_path):
    sources = [s for s, _ in pairs]
    sources[0] = "The file is open. Close it first."  # two sentences: translated as two
    sources[1:3] = ["Delete %s?", "<b>Warning</b>: %(name)s changed"]  # placeholders
    translator = Translator(EvaluateConfig(checkpoint=toy_checkpoint, beam=4))
    documents = translator.translate_documents(sources)
    outputs = [r.translation for r in documents]
    assert documents[0].n_segments == 2
    real = tmp_path / "real.tsv"
    real.write_text("".join(f"{s}\t{t}\n" for s, (_, t) in zip(sources, pairs)))
    report = evaluate(
        EvaluateConfig(checkpoint=toy_checkpoint, data=str(real), output=str(tmp_path / "e"))
    )
    refs = [t for _, t in pairs]
    assert report["bleu"] == round(sacrebleu.corpus_bleu(outputs, [refs]).score, 2)
    assert report["chrf"] == round(sacrebleu.corpus_chrf(outputs, [refs]).score, 2)
    assert report["signature"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert report["segments"] == sum(d.n_segments for d in documents) > len(sources)
    kept = fidelity(sources, outputs)
    assert report["placeholders"]["sentences"] == kept["sentences"] > 0
    assert report["placeholders"]["fidelity"] == kept["fidelity"]
    assert report["placeholders"]["reference_fidelity"] == fidelity(sources, refs)["fidelity"]
    subset = [outputs[i] for i in kept["indices"]], [refs[i] for i in kept["indices"]]
    assert report["placeholders"]["bleu"] == score(*subset)["bleu"]
    assert (tmp_path / "e" / "hypotheses.txt").read_text().splitlines() == outputs
    assert json.loads((tmp_path / "e" / "scores.json").read_text()) == report

    # References that are the model's own outputs score 100: nothing is lost between the two.
    own = tmp_path / "own.tsv"
    own.write_text("".join(f"{s}\t{o}\n" for s, o in zip(sources, outputs)))
    assert evaluate(EvaluateConfig(checkpoint=toy_checkpoint, data=str(own)))["bleu"] == 100.0


def test_evaluate_a_prepared_split_from_the_command_line(
    ray_local, toy_checkpoint, gettext_pairs, tmp_path, capsys
):
    raw = tmp_path / "pairs.tsv"
    raw.write_text("".join(f"{s}\t{t}\n" for s, t in gettext_pairs[:1500]))
    corpus = str(tmp_path / "prepared")
    prepare_corpus(
        PrepareConfig(inputs=[str(raw)], output=corpus, vocab_size=600, valid_size=50, test_size=40)
    )
    code = main(
        ["evaluate", "--checkpoint", toy_checkpoint, "--data", corpus, "--beam", "1", "limit=30"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["sentences"] == 30 and report["split"] == "test"
    assert report["beam"] == 1
    # The scores are those of the engine's greedy outputs for the first 30 pairs of the test
    # split, read here from the shards: another split, limit, beam or scoring scores otherwise.
    test = [
        read_shard(corpus, s["path"], ["src", "tgt"])
        for s in read_manifest(corpus)["shards"]["test"]
    ]
    sources = [src for table in test for src in table["src"].to_pylist()][:30]
    refs = [tgt for table in test for tgt in table["tgt"].to_pylist()][:30]
    translator = Translator(EvaluateConfig(checkpoint=toy_checkpoint, beam=1))
    outputs = [r.translation for r in translator.translate_documents(sources)]
    assert report["bleu"] == round(sacrebleu.corpus_bleu(outputs, [refs]).score, 2)
    assert report["chrf"] == round(sacrebleu.corpus_chrf(outputs, [refs]).score, 2)

    assert (
        main(["evaluate", "--checkpoint", toy_checkpoint, "--data", str(raw), "split=train"]) == 2
    )
    assert "split='train' is not one of: valid, test" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"bad.tsv:1: missing_tab"):
        (tmp_path / "bad.tsv").write_text("just a source\n")
        evaluate(EvaluateConfig(checkpoint=toy_checkpoint, data=str(tmp_path / "bad.tsv")))


def test_gpu_evaluation_is_refused_up_front_on_a_cluster_without_gpus(
    ray_local, toy_checkpoint, pairs, tmp_path
):
    """--gpu decodes in a Ray task holding a GPU (not in the driver, which under `ray job submit`
    runs on a head without one); where the cluster has none and cannot grow, one line at once."""
    real = tmp_path / "real.tsv"
    real.write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    cfg = EvaluateConfig(
        checkpoint=toy_checkpoint, data=str(real), use_gpu=True, wait_for_workers_s=5
    )
    with pytest.raises(
        ConfigError, match=r"evaluate --gpu needs 1 GPU, 1 CPU; the cluster has 0 GPU"
    ):
        evaluate(cfg)


def test_pipeline_gpu_flag_moves_evaluation_and_translation_to_gpus():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "jobs" / "pipeline.py"
    spec = importlib.util.spec_from_file_location("pipeline_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    cfg = job.config_from_args(["--corpus", "c.tsv", "--docs", "d/", "--output", "o/", "--gpu"])
    assert cfg.train.use_gpu and cfg.evaluate.use_gpu and cfg.translate.use_gpu
