"""The `s2s` command: flags and overrides reach the config; user errors are one line, exit 2."""

import pytest

from s2s.cli import _config_from_args, build_parser, main
from s2s.config import PrepareConfig


def parse(argv):
    return _config_from_args(PrepareConfig, build_parser().parse_args(argv))


def test_flags_yaml_and_overrides(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("vocab_size: 16000\nmax_len: 100\n")
    cfg = parse(
        ["prepare", "--input", "a.tsv", "--input", "s3://b/x/*.jsonl", "--src-file", "t.en",
         "--tgt-file", "t.de", "--output", "out", "--config", str(config), "--vocab-size", "4000",
         "--overwrite", "--format", "tsv", "max_ratio=2"]
    )  # fmt: skip
    assert cfg.inputs == ["a.tsv", "s3://b/x/*.jsonl"]
    assert (cfg.src_files, cfg.tgt_files) == (["t.en"], ["t.de"])
    assert cfg.vocab_size == 4000  # the flag beats the file
    assert cfg.max_len == 100  # the file beats the default
    assert cfg.max_ratio == 2.0
    assert cfg.overwrite is True
    assert cfg.input_format == "tsv"


def test_user_errors_are_one_line(tmp_path, capsys):
    code = main(["prepare", "--input", str(tmp_path / "nope.tsv"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"s2s: error: {tmp_path / 'nope.tsv'}: no such file, or no files match"
    assert main(["prepare", "--input", "a.tsv", "--output", "o", "vocab_sise=3"]) == 2
    assert "did you mean 'vocab_size'" in capsys.readouterr().err


def test_unknown_choice_is_rejected_by_name():
    with pytest.raises(Exception, match="tokenizer_type='x' is not one of"):
        parse(["prepare", "--input", "a", "--output", "o", "--tokenizer-type", "x"])


def test_train_flags_preset_and_model_overrides(tmp_path):
    from s2s.cli import _train_config_from_args

    args = build_parser().parse_args(
        ["train", "--data", "d", "--output", "o", "--model", "rnn-small", "--workers", "2",
         "--max-time", "20", "--gpu", "model.hidden_dim=128", "lr=5e-4"]
    )  # fmt: skip
    cfg = _train_config_from_args(args)
    assert (cfg.model.family, cfg.model.cell, cfg.model.hidden_dim) == ("rnn", "lstm", 128)
    assert cfg.model.enc_layers == 2  # from the preset
    assert (cfg.workers, cfg.max_time_min, cfg.use_gpu, cfg.lr) == ("2", 20.0, True, 5e-4)

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.yaml").write_text(
        "data: d\noutput: elsewhere\npreset: gru-luong\nmax_steps: 100\nmodel: {vocab_size: 900}\n"
    )
    resumed = _train_config_from_args(
        build_parser().parse_args(["train", "--resume", str(run), "max_steps=200"])
    )
    assert resumed.output == str(run) and resumed.max_steps == 200
    assert (resumed.model.cell, resumed.model.vocab_size) == ("gru", 900)
