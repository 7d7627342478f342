import pytest

from s2s.config import ConfigError, PrepareConfig, apply_overrides, load_config


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
        ({"vocab_size": 100}, "vocab_size=100 is too small"),
        ({"max_ratio": 0.5}, "max_ratio must be >= 1"),
        ({"valid_size": -1}, "valid_size must be >= 0"),
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
