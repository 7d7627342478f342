"""CTranslate2 export: the exported model decodes exactly as s2s's own engine (greedy), from local
disk or S3, alone or inside the translate job; RNNs are refused with a clear message."""

import json

import pytest

from s2s.checkpoint import save_checkpoint
from s2s.cli import main
from s2s.config import ConfigError, DecodeConfig, TranslateConfig, model_preset
from s2s.engines.ctranslate2 import export_ctranslate2
from s2s.models import build_model
from s2s.placeholders import placeholders
from s2s.tokenizer import Tokenizer, train_tokenizer
from s2s.translate import translate
from s2s.translator import Translator

pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def held_out(gettext_pairs):
    return [s for s, _ in gettext_pairs[5000:5400]]  # not in the toy model's training slice


@pytest.fixture(scope="module")
def plain(held_out):
    """Held-out sentences without placeholders: on those s2s's search and CTranslate2 follow the
    same rules; with them s2s's holds one CTranslate2 cannot (each sentinel exactly once, eos
    held until all are out: s2s.search.Sentinels)."""
    return [s for s in held_out if not placeholders(s)]


def test_exported_model_decodes_like_s2s(toy_checkpoint, held_out, plain, bucket, capsys):
    exported = f"{bucket}/exports/toy-ct2"
    assert main(["export", "--checkpoint", toy_checkpoint, "--output", exported]) == 0
    assert "translate with --engine ctranslate2" in capsys.readouterr().out

    ours = Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=1)).translate_sentences(plain)
    theirs = Translator(DecodeConfig(checkpoint=exported, beam=1, engine="ctranslate2"))
    assert theirs.model_id.endswith("+ct2") and theirs.model_id.startswith("checkpoint@step")
    outputs = theirs.translate_sentences(plain)
    assert [o.translation for o in outputs] == [o.translation for o in ours]
    assert sum(o.translation != "" for o in ours) > len(plain) // 2  # not a vacuous match
    # With placeholders CTranslate2 still masks, restores, and accounts for every sentence.
    marked = [s for s in held_out if placeholders(s)]
    for source, result in zip(marked, theirs.translate_sentences(marked)):
        kept = placeholders(source) == placeholders(result.translation)
        assert "｟" not in result.translation and result.placeholders_kept is kept

    # A checkpoint given to the ctranslate2 engine is exported on load; int8 still translates.
    int8 = Translator(
        DecodeConfig(checkpoint=toy_checkpoint, beam=4, engine="ctranslate2", compute_type="int8")
    ).translate_sentences(held_out[:50])
    assert all(o.error is None for o in int8) and sum(o.translation != "" for o in int8) > 25


def test_rnn_checkpoints_are_refused(tmp_path):
    proto = train_tokenizer([f"word{i} text{i % 7}" for i in range(2000)], vocab_size=300)
    size = Tokenizer(proto).vocab_size
    cfg = model_preset("rnn-small", {"vocab_size": size, "d_model": 16, "hidden_dim": 16})
    save_checkpoint(str(tmp_path / "rnn"), build_model(cfg), cfg, proto, {"step": 0})
    with pytest.raises(ConfigError, match="CTranslate2 runs Transformers"):
        export_ctranslate2(str(tmp_path / "rnn"), str(tmp_path / "out"))


def test_translate_job_with_the_ctranslate2_engine(ray_local, toy_checkpoint, plain, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    lines = [json.dumps({"id": i, "text": s}) for i, s in enumerate(plain[:40])]
    (docs / "a.jsonl").write_text("\n".join(lines) + "\n")
    settings = {"checkpoint": toy_checkpoint, "beam": 1, "cpus_per_actor": 0.5, "torch_threads": 1}
    summary = translate(
        TranslateConfig(
            **settings, engine="ctranslate2", input=str(docs), output=str(tmp_path / "o")
        )
    ).summary
    assert summary["rows_written"] == 40 and summary["model"].startswith("checkpoint@step")
    rows = [json.loads(x) for x in (tmp_path / "o" / "a.jsonl").read_text().splitlines()]
    alone = Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=1)).translate_documents(
        plain[:40]
    )
    assert [r["translation"] for r in rows] == [a.translation for a in alone]
    assert all(r["model"].endswith("+ct2") for r in rows)
