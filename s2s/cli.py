"""The ``s2s`` command: one subcommand per stage, each a thin door to one library function, and
``s2s pipeline`` for all of them in turn.

Settings come from the config dataclasses through one loader (:func:`s2s.config.load_config`):
defaults < ``--config FILE`` < flags < ``key=value``. Every field of a stage's config is also a flag
(``vocab_size`` -> ``--vocab-size``). Exit codes
(:mod:`s2s.exitcodes`): 0 done, 1 some inputs failed (listed last), 2 refused before work (one line
naming the setting or file), 3 busy (another run writes the output), 70 internal error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from typing import Any

import yaml

from s2s import storage
from s2s.config import (
    ConfigError,
    EvaluateConfig,
    PrepareConfig,
    TrainConfig,
    TranslateConfig,
    load_config,
    warn_deprecated,
)
from s2s.exitcodes import INPUTS_FAILED, OK, run_guarded
from s2s.pipeline import PipelineConfig, run_pipeline

__all__ = ["main"]

# Friendlier singular flags for list fields, and short names.
_PREPARE_ALIASES = {
    "inputs": "input",
    "src_files": "src-file",
    "tgt_files": "tgt-file",
    "input_format": "format",
}

# `s2s pipeline`'s flags, each a setting of PipelineConfig (dotted: a stage's): the stages' inputs
# and outputs, and the training settings most runs change. Everything else is key=value.
_PIPELINE_FLAGS = [
    ("--corpus", "corpus", {"action": "append", "help": "raw parallel text (repeatable)"}),
    ("--docs", "docs", {"help": "documents to translate"}),
    ("--output", "output", {"help": "root of prepared/, runs/, translations/"}),
    ("--preset", "train.preset", {"help": "model preset (transformer-small)"}),
    ("--max-steps", "train.max_steps", {"type": int}),
    ("--max-time", "train.max_time_min", {"type": float, "help": "minutes"}),
    ("--workers", "train.workers", {"help": "N, or MIN-MAX (elastic)"}),
    (
        "--gpu",
        "train.use_gpu",
        {"action": "store_true", "default": None, "help": "train, evaluate and translate on GPUs"},
    ),
]


def _add_renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    """Accept ``old``, the former name of flag ``new`` (setting ``dest``), for one release: it
    sets the same setting, with a warning (see :func:`_renamed_flags`)."""
    parser.add_argument(old, dest="renamed:" + dest, metavar="VALUE", help=argparse.SUPPRESS)
    parser.set_defaults(renamed=[*(parser.get_default("renamed") or []), (old, new, dest)])


def _renamed_flags(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with each renamed flag given moved to its new name, and a warning for it.

    Raises:
        ConfigError: when both a flag's old name and its new one are given.
    """
    for old, new, dest in getattr(args, "renamed", []):
        value = getattr(args, "renamed:" + dest)
        if value is None:
            continue
        if getattr(args, dest, None) is not None:
            raise ConfigError(
                f"{old} and {new} both given: {old} is the deprecated name of {new}; "
                f"give only {new}"
            )
        warn_deprecated(old, new)
        setattr(args, dest, value)
    return args


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, aliases: dict[str, str]) -> None:
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            continue  # nested sections are set as section.key=value
        flag = "--" + aliases.get(f.name, f.name.replace("_", "-"))
        default = getattr(defaults, f.name)
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", default=None)
        elif typing.get_origin(hint) is list:
            parser.add_argument(
                flag, dest=f.name, action="append", metavar="URI", help="repeatable"
            )
        elif typing.get_origin(hint) is typing.Literal:
            choices = "|".join(typing.get_args(hint))
            parser.add_argument(flag, dest=f.name, metavar=choices, help=f"default: {default}")
        else:
            help_text = f"default: {default}" if default not in ("", None) else None
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper(), help=help_text)
    parser.add_argument("--config", help="YAML file of settings (keys as the flags, with _)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings, last word")


def _config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """A stage's settings: defaults < ``--config FILE`` < flags < ``key=value``."""
    return load_config(cls, args.config, args.overrides, _given_flags(cls, args))


def _given_flags(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The settings of ``cls`` given as flags (argparse leaves the others None)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }


def _cmd_gettext(args: argparse.Namespace) -> None:
    """Write the en->LANG pairs of the named catalog sources as a TSV corpus.

    Raises:
        ConfigError: if the sources hold no LANG catalog with a usable translation.
    """
    from s2s.gettext import SYSTEM_LOCALE_DIR, build_corpus, package_locale_dirs

    # No source named: the system's catalogs, as before --packages existed.
    named = args.locale_dir or ([] if args.packages else [SYSTEM_LOCALE_DIR])
    packages = package_locale_dirs(args.lang) if args.packages else []
    pairs, stats = build_corpus(args.lang, [*named, *packages], args.max_chars)
    if not pairs:
        where = [*map(str, named), *(["installed Python packages"] if args.packages else [])]
        raise ConfigError(f"no {args.lang!r} catalogs with translations under {' or '.join(where)}")
    body = "".join(f"{src}\t{tgt}\n" for src, tgt in pairs).encode()
    storage.write_bytes(args.output, body)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items()))
    print(f"{args.output}: {stats.pairs} pairs from {stats.catalogs} catalogs ({dropped} dropped)")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from s2s.prepare import prepare_corpus

    result = prepare_corpus(_config_from_args(PrepareConfig, args))
    print(format_prepare_summary(result.manifest, result.output))
    # An input that broke off (a corrupt archive, a lost connection) failed: its records after
    # the break are not in the corpus. The rest is, and the manifest says where each line went.
    broken = result.manifest["counts"]["dropped"].get("read_error", 0)
    for where in result.manifest["dropped_samples"].get("read_error", []):
        print(f"FAILED {where}: reading stopped here")
    return INPUTS_FAILED if broken else OK


def _cmd_train(args: argparse.Namespace) -> None:
    from s2s.train import train

    result = train(_train_config_from_args(args))
    print(f"trained {result.output}: last checkpoint {result.checkpoint}")
    print(json.dumps(result.metrics))


def _train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """As any stage's; with ``--resume RUN`` the run's saved settings stand in for ``--config``
    (flags and key=value may still change them: the limits, most often)."""
    if not args.resume:
        return _config_from_args(TrainConfig, args)
    saved = yaml.safe_load(storage.read_bytes(storage.join(args.resume, "train_config.yaml")))
    flags = {**saved, "output": args.resume, **_given_flags(TrainConfig, args)}
    return load_config(TrainConfig, None, args.overrides, flags)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    cfg = _pipeline_config_from_args(args)
    report = run_pipeline(cfg)
    print(format_pipeline_summary(report, cfg))
    return INPUTS_FAILED if report["translate"]["inputs"]["failed_count"] else OK


def _pipeline_config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """defaults < ``--config FILE`` < flags < ``key=value``, each stage's settings in its section;
    a GPU for training (``--gpu``) means GPUs for every stage that computes with the model."""
    flags = {key: getattr(args, key) for _, key, _ in _PIPELINE_FLAGS}
    given = {key: value for key, value in flags.items() if value is not None}
    cfg = load_config(PipelineConfig, args.config, args.overrides, given)
    if cfg.train.use_gpu:
        cfg.evaluate.use_gpu = cfg.translate.use_gpu = True
    return cfg


def _cmd_average(args: argparse.Namespace) -> None:
    from s2s.checkpoint import average_checkpoints

    try:
        chosen = average_checkpoints(args.run, args.last, args.output)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(f"{args.output}: average of {len(chosen)} checkpoints: {', '.join(chosen)}")


def _cmd_translate(args: argparse.Namespace) -> int:
    from s2s.translate import translate

    result = translate(_config_from_args(TranslateConfig, args))
    print(format_translate_summary(result.summary))
    return INPUTS_FAILED if result.summary["inputs"]["failed_count"] else OK


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from s2s.evaluate import evaluate

    report = evaluate(_config_from_args(EvaluateConfig, args))
    print(json.dumps(report, indent=2))


def _cmd_export(args: argparse.Namespace) -> None:
    if not args.checkpoint:
        raise ConfigError("export needs --checkpoint URI (a checkpoint directory)")
    if args.format == "hf":
        from s2s.marian import export_marian

        if args.quantization:
            raise ConfigError("--quantization is for --format ctranslate2; hf stores float32")
        export_marian(args.checkpoint, args.output)
        print(
            f"{args.output}: Hugging Face Marian model of {args.checkpoint} "
            "(MarianMTModel.from_pretrained, MarianTokenizer.from_pretrained)"
        )
        return
    from s2s.engines.ctranslate2 import export_ctranslate2

    export_ctranslate2(args.checkpoint, args.output, args.quantization)
    print(
        f"{args.output}: CTranslate2 model of {args.checkpoint} "
        "(translate with --engine ctranslate2)"
    )


def _cmd_import(args: argparse.Namespace) -> None:
    from s2s.marian import import_marian

    summary = import_marian(args.source, args.output)
    print(json.dumps(summary, indent=2))
    print(
        f"{args.output}: s2s checkpoint of {args.source} (use it as --checkpoint, or fine-tune "
        f"with `s2s prepare --tokenizer {args.output}` and `s2s train --init-from {args.output}`)"
    )


def format_pipeline_summary(report: dict, cfg: PipelineConfig) -> str:
    """What each stage did (JSON), then where the results are; failed inputs last."""
    translated = report["translate"]
    stages = {k: v for k, v in report.items() if k != "translate"}
    lines = [
        json.dumps(stages, indent=2, default=str),
        f"prepared     {cfg.prepare.output}",
        f"checkpoint   {report['train']['checkpoint']}",
        f"test BLEU    {report['evaluate']['bleu']} (chrF {report['evaluate']['chrf']})",
        f"translations {cfg.translate.output}: {translated['rows_written']} documents written, "
        f"{translated['inputs']['already_complete']} inputs already complete",
    ]
    lines += [f"FAILED {f['input']}: {f['error']}" for f in translated["inputs"]["failed"]]
    return "\n".join(lines)


def format_translate_summary(summary: dict) -> str:
    """Where the documents went, and how fast; failed inputs last (what a scheduler shows)."""
    inputs = summary["inputs"]
    lines = [
        f"translated {inputs['translated']} of {inputs['total']} inputs into {summary['output']} "
        f"({inputs['already_complete']} already complete)",
        f"  {summary['documents']:,} documents ({summary['rows_written']:,} rows written), "
        f"{summary['errors']:,} with errors, {summary['warnings']:,} with warnings",
        f"  {summary['documents_per_s']:,.1f} documents/s, {summary['sentences_per_s']:,.1f} "
        f"sentences/s, {summary['tokens_per_s']:,.0f} tokens/s in {summary['seconds']:.1f} s",
    ]
    placeholders = summary["placeholders"]
    if placeholders["sentences"]:
        lines.append(
            f"  {placeholders['sentences']:,} sentences with placeholders, "
            f"{placeholders['lost']:,} of them not kept (rows: placeholders_lost)"
        )
    lines += [f"  error: {sample}" for sample in summary["error_samples"][:5]]
    lines += [f"  FAILED {f['input']}: {f['error']}" for f in inputs["failed"]]
    return "\n".join(lines)


def format_prepare_summary(manifest: dict, output: str) -> str:
    """One screen: where every line went, lengths, tokenizer, shards, speed."""
    counts, run = manifest["counts"], manifest["run"]
    lines = [
        f"prepared {output}",
        f"  read     {counts['read']:,} records from {len(manifest['read_units'])} inputs "
        f"in {run['seconds']:.1f} s ({run['pairs_per_s']:,.0f} records/s)",
        "  kept     " + " | ".join(f"{k} {v:,}" for k, v in counts["kept"].items()),
        f"  dropped  {sum(counts['dropped'].values()):,}",
    ]
    for reason, n in counts["dropped"].items():
        where = ", ".join(manifest["dropped_samples"].get(reason, [])[:2])
        lines.append(f"    {reason:<15} {n:>9,}  e.g. {where}")
    for split, sides in manifest["lengths"].items():
        desc = "; ".join(
            f"{side} mean {s['mean']} p95 {s['p95']} max {s['max']}" for side, s in sides.items()
        )
        lines.append(f"  tokens   {split}: {desc}")
    tok = manifest["tokenizer"]
    lines.append(f"  vocab    {tok['type']} {tok['vocab_size']:,} ({tok['source']})")
    for split, shards in manifest["shards"].items():
        size = sum(s["bytes"] for s in shards) / 1e6
        lines.append(f"  shards   {split}: {len(shards)} files, {size:.1f} MB")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2s", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="build a corpus").add_subparsers(
        dest="kind", required=True
    )
    gettext = corpus.add_parser("gettext", help="en->LANG pairs from this machine's .mo catalogs")
    gettext.add_argument("--lang", required=True, help="target language, e.g. de, fr, pt_BR")
    gettext.add_argument("--output", required=True, help="TSV file to write (local or s3://)")
    gettext.add_argument(
        "--locale-dir",
        action="append",
        help="a directory of LANG/LC_MESSAGES/*.mo; repeatable (default: /usr/share/locale, "
        "unless --packages alone)",
    )
    gettext.add_argument(
        "--packages",
        action="store_true",
        help="also read the catalogs installed Python packages ship (site-packages' "
        "**/LANG/LC_MESSAGES/*.mo: Django, pycountry, ...), after any --locale-dir",
    )
    gettext.add_argument("--max-chars", type=int, default=500)
    gettext.set_defaults(func=_cmd_gettext)

    prepare = sub.add_parser("prepare", help="raw parallel text -> tokenized Parquet shards")
    _add_config_flags(prepare, PrepareConfig, _PREPARE_ALIASES)
    prepare.set_defaults(func=_cmd_prepare)

    train = sub.add_parser("train", help="train a model on a prepared corpus (Ray Train)")
    _add_config_flags(train, TrainConfig, {"use_gpu": "gpu", "max_time_min": "max-time"})
    _add_renamed_flag(train, "--model", "--preset", "preset")
    train.add_argument(
        "--resume", metavar="RUN", help="continue a stopped run from its last checkpoint"
    )
    train.set_defaults(func=_cmd_train)

    translate = sub.add_parser(
        "translate", help="translate document files into one output file each (Ray Data)"
    )
    _add_config_flags(translate, TranslateConfig, {"use_gpu": "gpu"})
    _add_renamed_flag(translate, "--model", "--checkpoint", "checkpoint")
    translate.set_defaults(func=_cmd_translate)

    evaluate = sub.add_parser("evaluate", help="BLEU and chrF of a checkpoint (sacreBLEU)")
    _add_config_flags(evaluate, EvaluateConfig, {"use_gpu": "gpu"})
    _add_renamed_flag(evaluate, "--model", "--checkpoint", "checkpoint")
    evaluate.set_defaults(func=_cmd_evaluate)

    export = sub.add_parser(
        "export", help="convert a Transformer checkpoint for CTranslate2 or Hugging Face"
    )
    export.add_argument("--checkpoint", help="checkpoint directory (local or s3://); required")
    _add_renamed_flag(export, "--model", "--checkpoint", "checkpoint")
    export.add_argument("--output", required=True, help="directory to write (local or s3://)")
    export.add_argument(
        "--format",
        choices=["ctranslate2", "hf"],
        default="ctranslate2",
        help="ctranslate2: for --engine ctranslate2; hf: a Hugging Face Marian directory",
    )
    export.add_argument(
        "--quantization", choices=["int8", "int8_float32", "bfloat16", "float16"],
        help="store weights quantized (default: float32)",
    )  # fmt: skip
    export.set_defaults(func=_cmd_export)

    imported = sub.add_parser(
        "import", help="convert a Hugging Face Marian (OPUS-MT) model into an s2s checkpoint"
    )
    imported.add_argument("source", metavar="DIR", help="the model directory (local or s3://)")
    imported.add_argument(
        "--from", dest="source_format", choices=["hf"], required=True, help="its format"
    )
    imported.add_argument("--output", required=True, help="checkpoint directory to write")
    imported.set_defaults(func=_cmd_import)

    average = sub.add_parser("average-checkpoints", help="average the last N checkpoints of a run")
    average.add_argument("--run", required=True, help="run directory (local or s3://)")
    average.add_argument("--last", type=int, default=3)
    average.add_argument("--output", required=True, help="checkpoint directory to write")
    average.set_defaults(func=_cmd_average)

    pipeline = sub.add_parser(
        "pipeline", help="prepare -> train -> evaluate -> translate, each skipped when done"
    )
    for flag, key, options in _PIPELINE_FLAGS:
        pipeline.add_argument(flag, dest=key, **options)
    _add_renamed_flag(pipeline, "--model", "--preset", "train.preset")
    pipeline.add_argument("--config", help="YAML with corpus/docs/output and stage sections")
    pipeline.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.lr=5e-4")
    pipeline.set_defaults(func=_cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: see :mod:`s2s.exitcodes` (0 done, 1 inputs failed, 2 refused, 3 busy,
    70 internal error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_guarded("s2s", lambda: args.func(_renamed_flags(args)))


if __name__ == "__main__":
    sys.exit(main())
