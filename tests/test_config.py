import dataclasses
import importlib.util
import math
import typing
from pathlib import Path

import pytest

from s2s.config import (
    ConfigError,
    DecodeConfig,
    EvaluateConfig,
    ModelConfig,
    PrepareConfig,
    TrainConfig,
    TranslateConfig,
    load_config,
    model_preset,
    numeric_bounds,
)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "prep.yaml"
    path.write_text("inputs: [a.tsv, b.tsv]\nvocab_size: 16000\ntokenizer_type: bpe\n")
    cfg = load_config(
        PrepareConfig, str(path), ["vocab_size=500", "max_ratio=2.5", "overwrite=true"]
    )
    assert cfg.inputs == ["a.tsv", "b.tsv"]
    assert cfg.vocab_size == 500
    assert cfg.max_ratio == 2.5
    assert cfg.overwrite is True
    assert cfg.tokenizer_type == "bpe"
    assert PrepareConfig().vocab_size == 8000  # defaults untouched


def test_list_and_optional_values():
    cfg = load_config(
        PrepareConfig, overrides=["inputs=x.tsv,y.tsv", "tokenizer=null", "test_size=0.05"]
    )
    assert cfg.inputs == ["x.tsv", "y.tsv"]
    assert cfg.tokenizer is None
    assert cfg.test_size == 0.05


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("vocab_sise=10", "unknown config key 'vocab_sise'; did you mean 'vocab_size'"),
        ("vocab_size=big", "vocab_size must be a number"),
        ("vocab_size=1.5", "vocab_size must be an integer"),
        ("tokenizer_type=wordpiece", "tokenizer_type='wordpiece' is not one of: unigram, bpe"),
        ("overwrite=maybe", "overwrite must be true or false"),
        ("no_equals_sign", "is not of the form key=value"),
    ],
)
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(PrepareConfig, overrides=[override])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inputz: [a.tsv]\n")
    with pytest.raises(ConfigError, match="unknown config key 'inputz'; did you mean 'inputs'"):
        load_config(PrepareConfig, str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "config file not found: "),
        ("vocab_size: [8000\n", "is not valid YAML: "),
        ("- a.tsv\n- b.tsv\n", "must hold a mapping of key: value"),
    ],
)
def test_unreadable_config_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "prep.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(PrepareConfig, str(path))
    assert str(path) in str(raised.value)


def test_layers_merge_key_by_key_and_model_is_a_diff_over_the_preset(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("preset: rnn-small\nlr: 0.002\nmodel: {hidden_dim: 128, dropout: 0.3}\n")
    cfg = load_config(TrainConfig, str(path), ["model.dropout=0.1"], {"workers": "2"})
    assert (cfg.model.family, cfg.model.cell, cfg.model.enc_layers) == ("rnn", "lstm", 2)
    assert (cfg.model.hidden_dim, cfg.model.dropout) == (128, 0.1)  # the file's, then the word's
    assert (cfg.lr, cfg.workers) == (0.002, "2")


@pytest.mark.parametrize("layer", ["file", "flag", "override"])
def test_preset_from_any_layer_builds_its_model(tmp_path, layer):
    """A preset set after the model was built used to leave a Transformer behind its name."""
    path = tmp_path / "train.yaml"
    path.write_text("preset: rnn-small\n" if layer == "file" else "lr: 0.002\n")
    flags = {"preset": "rnn-small"} if layer == "flag" else {}
    overrides = ["preset=rnn-small"] if layer == "override" else []
    cfg = load_config(TrainConfig, str(path), [*overrides, "model.hidden_dim=64"], flags)
    assert cfg.preset == "rnn-small"
    assert (cfg.model.family, cfg.model.enc_layers, cfg.model.hidden_dim) == ("rnn", 2, 64)
    assert cfg.model == model_preset("rnn-small", {"hidden_dim": 64})


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown model preset 'rnn'; choose one of: "):
        load_config(TrainConfig, overrides=["preset=rnn"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"inputs": []}, "prepare needs input"),
        ({"output": ""}, "needs --output"),
        ({"src_files": ["a.en"]}, "must pair up"),
        ({"vocab_size": 100}, r"vocab_size must be an integer >= 300, got 100 \(260 ids"),
        ({"max_ratio": 0.5}, "max_ratio must be a number >= 1, got 0.5"),
        ({"valid_size": -1}, "valid_size must be a number >= 0, got -1"),
        ({"valid_size": 0.5, "test_size": 0.5}, "as fractions leave no training data"),
    ],
)
def test_validate(changes, message):
    cfg = PrepareConfig(inputs=["a.tsv"], output="out")
    for key, value in changes.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_readme_config_reference_matches_the_code():
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "config_reference", root / ".ci" / "config_reference.py"
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    readme = (root / "README.md").read_text()
    section = readme.split("<!-- config-reference:start -->\n")[1].split(
        "<!-- config-reference:end -->"
    )[0]
    assert section == generator.config_reference(), "README is stale: .ci/config_reference.py"


# A valid config of every class: each test below changes one numeric setting of it.
VALID = {
    PrepareConfig: lambda: PrepareConfig(inputs=["a.tsv"], output="out"),
    ModelConfig: ModelConfig,
    TrainConfig: lambda: TrainConfig(data="corpus", output="run", max_steps=10),
    DecodeConfig: lambda: DecodeConfig(checkpoint="ckpt"),
    TranslateConfig: lambda: TranslateConfig(checkpoint="ckpt", input="docs", output="out"),
    EvaluateConfig: lambda: EvaluateConfig(checkpoint="ckpt", data="corpus"),
}
NUMERIC = [
    (cls, f.name)
    for cls in VALID
    for f in dataclasses.fields(cls)
    if typing.get_type_hints(cls)[f.name] in (int, float)
]


def probes(cls: type, key: str) -> list:
    """The usual suspects, each bound and its neighbours, and for ints a fraction."""
    bounds = numeric_bounds(cls)[key]
    step = 1 if typing.get_type_hints(cls)[key] is int else 1e-6
    values = [0, -1, 1, math.nan, math.inf, -math.inf, 10**12, 0.5]
    for end in (bounds.low, bounds.high):
        if math.isfinite(end):
            values += [end - step, end, end + step]
    return values


def test_every_numeric_setting_has_bounds():
    """A numeric field added without an entry in config._BOUNDS fails here."""
    for cls in VALID:
        numeric = {name for c, name in NUMERIC if c is cls}
        assert numeric == set(numeric_bounds(cls)), cls.__name__


@pytest.mark.parametrize(("cls", "key"), NUMERIC, ids=[f"{c.__name__}.{k}" for c, k in NUMERIC])
def test_numeric_setting_out_of_bounds_is_refused(cls, key):
    bounds = numeric_bounds(cls)[key]
    integer = typing.get_type_hints(cls)[key] is int
    prefix = "model." if cls is ModelConfig else ""
    for value in probes(cls, key):
        cfg = VALID[cls]()
        setattr(cfg, key, value)
        allowed = bounds.admits(value) and (not integer or float(value).is_integer())
        assert not (math.isnan(value) or math.isinf(value)) or not allowed  # never NaN or inf
        if allowed:
            try:
                cfg.validate()
            except ConfigError as err:  # another rule may object; the bounds must not
                assert f"{prefix}{key} must be" not in str(err), value
        else:
            kind = "an integer" if integer else "a number"
            message = f"{prefix}{key} must be {kind} {bounds.describe()}, got {value!r}"
            with pytest.raises(ConfigError) as raised:
                cfg.validate()
            assert str(raised.value).startswith(message), (value, str(raised.value))


@pytest.mark.parametrize(
    ("cls", "key", "value"),
    [
        # Values that made a loop spin, divide by zero or wait forever before they were refused.
        (PrepareConfig, "shard_rows", 0),
        (PrepareConfig, "read_block_rows", 0),
        (TrainConfig, "max_tokens", 0),
        (TrainConfig, "shuffle_buffer", 0),
        (TrainConfig, "resize_interval_s", 0.0),
        (TrainConfig, "wait_for_workers_s", math.inf),
        (TrainConfig, "max_time_min", math.nan),
        (DecodeConfig, "beam", 0),
        (DecodeConfig, "max_len_b", 10**9),
        (TranslateConfig, "piece_mb", 1e-9),
        (TranslateConfig, "lease_ttl_s", 1.0),  # renewed every 0.33 s: lost at the first hiccup
        (TranslateConfig, "lease_ttl_s", 86_400.0),  # a dead run would block the output a day
        (TranslateConfig, "gpus_per_actor", 2.0),
        (ModelConfig, "heads", 0),  # was a ZeroDivisionError in the d_model % heads check
    ],
)
def test_known_bad_values(cls, key, value):
    cfg = VALID[cls]()
    setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=f"{key} must be .*, got {value!r}"):
        cfg.validate()


def test_defaults_and_shipped_settings_pass():
    for make in VALID.values():
        make().validate()
    for name in ("transformer-small", "transformer-base", "transformer-big", "rnn-small"):
        model_preset(name)
    # The smallest values tests and jobs use.
    TranslateConfig(
        checkpoint="m", input="i", output="o", piece_mb=0.0002, lease_ttl_s=6, cpus_per_actor=0.5
    ).validate()
    TrainConfig(data="d", output="o", max_steps=1, resize_interval_s=2.0).validate()


def test_override_out_of_bounds_names_the_key():
    cfg = load_config(
        TranslateConfig, None, ["piece_mb=0"], {"checkpoint": "m", "input": "i", "output": "o"}
    )
    with pytest.raises(ConfigError, match=r"piece_mb must be a number >= 0.0001, got 0.0"):
        cfg.validate()
    train = TrainConfig(data="d", output="o", max_steps=1)
    train.model.dropout = 1.0
    with pytest.raises(ConfigError, match=r"model.dropout must be a number in \[0, 1\), got 1.0"):
        train.validate()


def test_pipeline_checks_every_stage_before_the_first(tmp_path):
    from s2s.pipeline import PipelineConfig

    settings = {"corpus": ["c.tsv"], "docs": "docs", "output": str(tmp_path), "train.max_steps": 5}
    load_config(PipelineConfig, None, [], settings).resolve()
    for override, message in [
        ("translate.piece_mb=0", "translate: piece_mb must be a number >= 0.0001"),
        ("evaluate.beam=0", "evaluate: beam must be an integer >= 1"),
        ("train.lr=-1", "train: lr must be a number > 0"),
        ("prepare.shard_rows=0", "prepare: shard_rows must be an integer >= 1"),
    ]:
        cfg = load_config(PipelineConfig, None, [override], settings)
        with pytest.raises(ConfigError, match=message):
            cfg.resolve()


def test_pipeline_sections_load_as_the_stages_do(tmp_path):
    from s2s.pipeline import PipelineConfig

    path = tmp_path / "pipeline.yaml"
    path.write_text("train: {preset: gru-luong, model: {hidden_dim: 64}, lr: 0.002}\n")
    settings = {"corpus": ["c.tsv"], "docs": "docs", "output": str(tmp_path), "train.max_steps": 5}
    cfg = load_config(PipelineConfig, str(path), ["train.preset=rnn-small"], settings)
    assert (cfg.train.model.cell, cfg.train.model.hidden_dim, cfg.train.lr) == ("lstm", 64, 0.002)
    cfg.resolve()
    assert cfg.train.output == str(tmp_path / "runs" / "rnn-small")  # named after the model built
    with pytest.raises(ConfigError, match="unknown config key 'train.model.hiden_dim'"):
        load_config(PipelineConfig, None, ["train.model.hiden_dim=3"], settings)


# -- a decode config's `model` (the checkpoint URI) is now `checkpoint`; `model` means the
# architecture only (TrainConfig.model). The old key still works for one release, with a warning.


@pytest.mark.parametrize("cls", [DecodeConfig, TranslateConfig, EvaluateConfig])
def test_decode_configs_take_checkpoint(tmp_path, capsys, cls):
    path = tmp_path / "new.yaml"
    path.write_text("checkpoint: runs/r1/best\nbeam: 2\n")
    cfg = load_config(cls, str(path))
    assert (cfg.checkpoint, cfg.beam) == ("runs/r1/best", 2)
    assert load_config(cls, None, ["checkpoint=s3://m/best"]).checkpoint == "s3://m/best"
    assert capsys.readouterr().err == ""
    assert "model" not in {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", [DecodeConfig, TranslateConfig, EvaluateConfig])
def test_old_model_key_is_read_as_checkpoint_with_a_warning(tmp_path, capsys, cls):
    warning = "s2s: warning: config key 'model' is deprecated; use 'checkpoint'\n"
    path = tmp_path / "old.yaml"
    path.write_text("model: runs/r1/best\nbeam: 2\n")
    cfg = load_config(cls, str(path))
    assert (cfg.checkpoint, cfg.beam) == ("runs/r1/best", 2)
    assert capsys.readouterr().err == warning
    assert load_config(cls, None, ["model=s3://m/best"]).checkpoint == "s3://m/best"
    assert capsys.readouterr().err == warning
    assert load_config(cls, None, [], {"model": "flagged"}).checkpoint == "flagged"
    assert capsys.readouterr().err == warning


def test_old_and_new_key_together_are_refused(tmp_path):
    both = "config keys 'model' and 'checkpoint' both given: 'model' is the deprecated name of"
    path = tmp_path / "old.yaml"
    path.write_text("model: a\n")
    with pytest.raises(ConfigError, match=both):
        load_config(TranslateConfig, str(path), ["checkpoint=b"])
    with pytest.raises(ConfigError, match=both):
        load_config(EvaluateConfig, None, ["model=a", "checkpoint=b"])


def test_pipeline_sections_read_the_old_key_too(capsys):
    from s2s.pipeline import PipelineConfig

    cfg = load_config(PipelineConfig, None, ["evaluate.model=e", "translate.checkpoint=t"])
    assert (cfg.evaluate.checkpoint, cfg.translate.checkpoint) == ("e", "t")
    assert capsys.readouterr().err == (
        "s2s: warning: config key 'evaluate.model' is deprecated; use 'evaluate.checkpoint'\n"
    )
    with pytest.raises(ConfigError, match="'translate.model' and 'translate.checkpoint' both"):
        load_config(PipelineConfig, None, ["translate.model=a", "translate.checkpoint=b"])


def test_train_model_is_still_the_architecture(capsys):
    cfg = load_config(TrainConfig, None, ["preset=rnn-small", "model.hidden_dim=64"])
    assert (cfg.model.family, cfg.model.hidden_dim) == ("rnn", 64)
    assert capsys.readouterr().err == ""  # nothing deprecated here


def test_a_decode_config_without_checkpoint_names_the_flag():
    with pytest.raises(ConfigError, match=r"^needs --checkpoint URI \(a checkpoint directory\)$"):
        TranslateConfig(input="i", output="o").validate()
