import dataclasses
import math
import typing

import pytest

from s2s.config import (
    ConfigError,
    DecodeConfig,
    EvaluateConfig,
    ModelConfig,
    PrepareConfig,
    TrainConfig,
    TranslateConfig,
    apply_overrides,
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
    cfg = apply_overrides(
        PrepareConfig(), ["inputs=x.tsv,y.tsv", "tokenizer=null", "test_size=0.05"]
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
        apply_overrides(PrepareConfig(), [override])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inputz: [a.tsv]\n")
    with pytest.raises(ConfigError, match="unknown config key 'inputz'; did you mean 'inputs'"):
        load_config(PrepareConfig, str(path))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PrepareConfig, "/nonexistent/prep.yaml")


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
    from pathlib import Path

    from s2s.config import config_reference

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("<!-- config-reference:start -->\n")[1].split(
        "<!-- config-reference:end -->"
    )[0]
    assert section == config_reference(), "README is stale: python -m s2s.config > section"


# A valid config of every class: each test below changes one numeric setting of it.
VALID = {
    PrepareConfig: lambda: PrepareConfig(inputs=["a.tsv"], output="out"),
    ModelConfig: ModelConfig,
    TrainConfig: lambda: TrainConfig(data="corpus", output="run", max_steps=10),
    DecodeConfig: lambda: DecodeConfig(model="ckpt"),
    TranslateConfig: lambda: TranslateConfig(model="ckpt", input="docs", output="out"),
    EvaluateConfig: lambda: EvaluateConfig(model="ckpt", data="corpus"),
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
        model="m", input="i", output="o", piece_mb=0.0002, lease_ttl_s=6, cpus_per_actor=0.5
    ).validate()
    TrainConfig(data="d", output="o", max_steps=1, resize_interval_s=2.0).validate()


def test_override_out_of_bounds_names_the_key():
    cfg = apply_overrides(TranslateConfig(model="m", input="i", output="o"), ["piece_mb=0"])
    with pytest.raises(ConfigError, match=r"piece_mb must be a number >= 0.0001, got 0.0"):
        cfg.validate()
    train = TrainConfig(data="d", output="o", max_steps=1)
    train.model.dropout = 1.0
    with pytest.raises(ConfigError, match=r"model.dropout must be a number in \[0, 1\), got 1.0"):
        train.validate()


def test_pipeline_checks_every_stage_before_the_first(tmp_path):
    from s2s.pipeline import load_pipeline_config

    settings = {"corpus": ["c.tsv"], "docs": "docs", "output": str(tmp_path), "train.max_steps": 5}
    load_pipeline_config(None, settings, []).resolve()
    for override, message in [
        ("translate.piece_mb=0", "translate: piece_mb must be a number >= 0.0001"),
        ("evaluate.beam=0", "evaluate: beam must be an integer >= 1"),
        ("train.lr=-1", "train: lr must be a number > 0"),
        ("prepare.shard_rows=0", "prepare: shard_rows must be an integer >= 1"),
    ]:
        cfg = load_pipeline_config(None, settings, [override])
        with pytest.raises(ConfigError, match=message):
            cfg.resolve()
