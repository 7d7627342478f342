"""The `s2s` command: flags and overrides reach the config; user errors are one line, exit 2."""

import json
import shlex

import pytest

from s2s.cli import _config_from_args, _renamed_flags, _train_config_from_args, build_parser, main
from s2s.config import EvaluateConfig, PrepareConfig, TranslateConfig


def parse(argv):
    return _config_from_args(PrepareConfig, build_parser().parse_args(argv))


def parsed(argv):
    """The arguments as a command sees them: renamed flags already under their new names."""
    return _renamed_flags(build_parser().parse_args(argv))


def test_flags_yaml_and_overrides(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("vocab_size: 16000\nmax_len: 100\n")
    argv = shlex.split(
        "prepare --input a.tsv --input s3://b/x/*.jsonl --src-file t.en --tgt-file t.de "
        "--output out --vocab-size 4000 --overwrite --format tsv max_ratio=2"
    )
    cfg = parse([*argv, "--config", str(config)])
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
    argv = shlex.split(
        "train --data d --output o --preset rnn-small --workers 2 --max-time 20 --gpu "
        "model.hidden_dim=128 lr=5e-4"
    )
    args = build_parser().parse_args(argv)
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


def test_train_preset_as_key_value_builds_that_model():
    args = build_parser().parse_args(
        ["train", "--data", "d", "--output", "o", "preset=rnn-small", "model.hidden_dim=128"]
    )
    cfg = _train_config_from_args(args)
    assert (cfg.preset, cfg.model.family, cfg.model.hidden_dim) == ("rnn-small", "rnn", 128)


@pytest.mark.parametrize("command", ["prepare", "train", "translate", "evaluate", "pipeline"])
def test_missing_config_file_is_one_line(tmp_path, capsys, command):
    missing = tmp_path / "nope.yaml"
    assert main([command, "--config", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"s2s: error: config file not found: {missing}"


def test_pipeline_flags_reach_the_stages(tmp_path):
    from s2s.cli import _pipeline_config_from_args

    config = tmp_path / "pipeline.yaml"
    config.write_text("docs: from-file\ntrain: {lr: 0.002, max_steps: 7}\nevaluate: {beam: 2}\n")
    argv = shlex.split(
        "pipeline --corpus a.tsv --corpus b.tsv --output o --preset rnn-small --max-steps 5 "
        "--max-time 9 --workers 1-2 --gpu train.model.hidden_dim=64 translate.beam=1"
    )
    cfg = _pipeline_config_from_args(build_parser().parse_args([*argv, "--config", str(config)]))
    assert (cfg.corpus, cfg.docs, cfg.output) == (["a.tsv", "b.tsv"], "from-file", "o")
    train = cfg.train
    assert (train.preset, train.model.family, train.model.hidden_dim) == ("rnn-small", "rnn", 64)
    assert (train.max_steps, train.max_time_min, train.workers, train.lr) == (5, 9.0, "1-2", 2e-3)
    assert (cfg.evaluate.beam, cfg.translate.beam) == (2, 1)
    assert train.use_gpu and cfg.evaluate.use_gpu and cfg.translate.use_gpu  # --gpu: every stage


def test_pipeline_summary_ends_with_where_things_are_and_failures():
    from s2s.cli import format_pipeline_summary
    from s2s.pipeline import PipelineConfig

    cfg = PipelineConfig()
    cfg.prepare.output, cfg.translate.output = "o/prepared", "o/translations"
    failed = [{"input": "o/docs/b.jsonl", "error": "not JSON"}]
    translated = {"rows_written": 7, "inputs": {"already_complete": 1, "failed": failed}}
    report = {
        "prepare": {"skipped": "prepared earlier", "output": "o/prepared"},
        "train": {"checkpoint": "o/runs/transformer-small/best"},
        "evaluate": {"bleu": 12.5, "chrf": 40.1},
        "translate": translated,
    }
    lines = format_pipeline_summary(report, cfg).splitlines()
    assert lines[-5:] == [
        "prepared     o/prepared",
        "checkpoint   o/runs/transformer-small/best",
        "test BLEU    12.5 (chrF 40.1)",
        "translations o/translations: 7 documents written, 1 inputs already complete",
        "FAILED o/docs/b.jsonl: not JSON",
    ]
    stages = {k: v for k, v in report.items() if k != "translate"}
    assert json.loads("\n".join(lines[:-5])) == stages  # what each stage did, first


# -- renamed flags: --model of train and pipeline is now --preset, of translate, evaluate and
# export --checkpoint; the old name still works for one release, with a one-line warning


def test_train_takes_preset_and_still_model_with_a_warning(capsys):
    base = ["train", "--data", "d", "--output", "o"]
    cfg = _train_config_from_args(parsed([*base, "--preset", "gru-luong"]))
    assert (cfg.preset, cfg.model.cell) == ("gru-luong", "gru")
    assert capsys.readouterr().err == ""
    cfg = _train_config_from_args(parsed([*base, "--model", "gru-luong"]))
    assert (cfg.preset, cfg.model.cell) == ("gru-luong", "gru")  # the same effect
    assert capsys.readouterr().err == "s2s: warning: --model is deprecated; use --preset\n"


def test_pipeline_takes_preset_and_still_model_with_a_warning(capsys):
    from s2s.cli import _pipeline_config_from_args

    for flag, warning in [("--preset", ""), ("--model", "--model is deprecated; use --preset")]:
        cfg = _pipeline_config_from_args(parsed(["pipeline", "--output", "o", flag, "rnn-small"]))
        assert (cfg.train.preset, cfg.train.model.family) == ("rnn-small", "rnn")
        assert capsys.readouterr().err == (f"s2s: warning: {warning}\n" if warning else "")


@pytest.mark.parametrize(
    "command, cls", [("translate", TranslateConfig), ("evaluate", EvaluateConfig)]
)
def test_decoding_takes_checkpoint_and_still_model_with_a_warning(capsys, command, cls):
    cfg = _config_from_args(cls, parsed([command, "--checkpoint", "runs/r1/best", "beam=2"]))
    assert (cfg.checkpoint, cfg.beam) == ("runs/r1/best", 2)
    assert capsys.readouterr().err == ""
    cfg = _config_from_args(cls, parsed([command, "--model", "runs/r1/best", "beam=2"]))
    assert (cfg.checkpoint, cfg.beam) == ("runs/r1/best", 2)
    assert capsys.readouterr().err == "s2s: warning: --model is deprecated; use --checkpoint\n"
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    shown = capsys.readouterr().out
    assert "--checkpoint" in shown and "--model" not in shown  # the old name: a hidden alias


def test_export_takes_checkpoint_and_still_model_with_a_warning(tmp_path, capsys):
    out = str(tmp_path / "ct2")
    assert main(["export", "--output", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "s2s: error: export needs --checkpoint URI (a checkpoint directory)"
    # A checkpoint that is not there: refused in one line, after the warning.
    assert main(["export", "--model", str(tmp_path / "none"), "--output", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "s2s: warning: --model is deprecated; use --checkpoint"
    assert len(err) == 2 and err[1].startswith("s2s: error: "), err


def test_a_decode_config_without_checkpoint_names_the_flag(capsys):
    assert main(["translate", "--input", "i", "--output", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "s2s: error: needs --checkpoint URI (a checkpoint directory)"


@pytest.mark.parametrize(
    "argv, old, new",
    [
        ("train --data d --output o --model rnn-small --preset gru-luong", "--model", "--preset"),
        ("pipeline --output o --preset rnn-small --model gru-luong", "--model", "--preset"),
        ("translate --input i --output o --model a --checkpoint b", "--model", "--checkpoint"),
        ("evaluate --data d --checkpoint b --model a", "--model", "--checkpoint"),
        ("export --output o --model a --checkpoint b", "--model", "--checkpoint"),
    ],
)
def test_an_old_flag_and_its_new_name_together_are_refused(capsys, argv, old, new):
    assert main(shlex.split(argv)) == 2
    assert capsys.readouterr().err.strip() == (
        f"s2s: error: {old} and {new} both given: {old} is the deprecated name of {new}; "
        f"give only {new}"
    )
