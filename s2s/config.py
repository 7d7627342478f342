"""Typed configs for every stage, loadable from YAML and overridable as ``key=value``.

The dataclasses hold the defaults; a YAML file states only what differs; flags and ``key=value``
arguments override both. One loader, :func:`load_config`, serves every stage, the CLI and the
pipeline. An unknown key, a value of the wrong type or a value outside a fixed set of choices raises
:class:`ConfigError` naming the key (and the closest valid key or the valid choices). Each stage
then calls ``validate()`` once, before any work starts: it checks every numeric setting against its
bounds (one table, ``_BOUNDS``) and the settings against each other.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "Bounds",
    "numeric_bounds",
    "PrepareConfig",
    "ModelConfig",
    "TrainConfig",
    "DecodeConfig",
    "TranslateConfig",
    "EvaluateConfig",
    "MODEL_PRESETS",
    "model_preset",
    "train_config",
    "load_config",
    "from_dict",
    "warn_deprecated",
]


class ConfigError(ValueError):
    """A user-supplied setting is unknown, mistyped or inconsistent; the message says which."""


@dataclass
class PrepareConfig:
    """Settings of ``s2s prepare``: raw parallel text in, tokenized Parquet shards out."""

    # Inputs: files, directories or globs, local or s3://. Each pair of `src_files`/`tgt_files`
    # is one aligned plain-text corpus (line i of one translates line i of the other).
    inputs: list[str] = field(default_factory=list)
    src_files: list[str] = field(default_factory=list)
    tgt_files: list[str] = field(default_factory=list)
    # Explicit evaluation sets; when given they replace hash carving for that split.
    valid: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    output: str = ""
    overwrite: bool = False
    # Local paths on a cluster of several nodes are refused unless mounted on every node.
    shared_fs: bool = False

    # Formats: "auto" decides by file extension (.tsv/.txt, .jsonl/.json, .parquet; .gz etc. ok).
    input_format: Literal["auto", "tsv", "jsonl", "parquet"] = "auto"
    src_column: str = "src"  # JSONL key / Parquet column of the source side
    tgt_column: str = "tgt"

    # Filters. Lengths are SentencePiece tokens without bos/eos.
    max_len: int = 250
    # 4, not 3: in subword tokens a fine German translation is often 3x its English source
    # ("Change software repository parameters" -> 4:13); at 4 the gettext corpus loses 22 pairs,
    # all loose translations ("Continue" -> "Prozessbearbeitung wieder aufgenommen.").
    max_ratio: float = 4.0
    # Pairs whose longer side is shorter than this are exempt from the ratio filter: in subword
    # tokens "Permission denied" -> "Berechtigung verweigert" is 2:7, and a fine pair.
    ratio_min_tokens: int = 10
    # A line longer than this (bytes) is dropped unread: it is no sentence, and bounds memory.
    max_line_bytes: int = 65536

    # Tokenizer: reuse an existing SentencePiece model (a .model file, or a checkpoint directory:
    # its tokenizer, and its target side's where it has one), or train a joint one on a sample.
    tokenizer: str | None = None
    vocab_size: int = 8000
    tokenizer_type: Literal["unigram", "bpe"] = "unigram"
    # Below 1.0 the rarest characters fall back to UTF-8 byte pieces (byte_fallback is on).
    character_coverage: float = 0.9995
    # Pairs; bounds the trainer's memory (and time: ~4 s on 2 cores) whatever the corpus size.
    tokenizer_sample: int = 100_000
    # Placeholders (printf and Python formats, markup, entities, escapes: s2s.placeholders) found
    # on both sides of a pair are encoded as numbered sentinels, which a tokenizer trained here
    # holds as single pieces: the model learns to copy them, and translate puts the spans back.
    protect_placeholders: bool = True
    # A regex of further spans to protect, tried before the built-in ones: '\$\w+' for $name.
    placeholder_pattern: str = ""

    # Splits carved by a hash of the normalised source: a value >= 1 is a number of distinct
    # source sentences, a value < 1 a fraction of them.
    valid_size: float = 2000
    test_size: float = 2000
    split_seed: str = "s2s-split-v1"

    # Output shards hold at most this many pairs (1-2 MB of zstd Parquet for short sentences).
    # It is also the unit of work of the tokenize-and-write step: smaller keeps every core busy
    # (measured on 2 cores: 50k rows 9.3 s, 200k rows 13.3 s for a million pairs).
    shard_rows: int = 50_000
    read_block_rows: int = 32768  # rows per block produced by the readers

    def validate(self) -> None:
        """Check every setting's bounds and the settings against each other.

        Raises:
            ConfigError: naming the offending setting and what to change.
        """
        if not (self.inputs or self.src_files):
            raise ConfigError("prepare needs input: give --input URI or --src-file/--tgt-file")
        if not self.output:
            raise ConfigError("prepare needs --output URI")
        if len(self.src_files) != len(self.tgt_files):
            raise ConfigError(
                f"src_files ({len(self.src_files)}) and tgt_files ({len(self.tgt_files)}) "
                "must pair up one to one"
            )
        _check_bounds(self)
        _check_pattern(self.placeholder_pattern)
        valid, test = self.valid_size, self.test_size
        if valid < 1 and test < 1 and valid + test >= 1:
            raise ConfigError(
                f"valid_size + test_size = {valid + test:g} as fractions "
                "leave no training data; lower them"
            )


@dataclass
class ModelConfig:
    """Architecture of a seq2seq model; a preset fills every field, any field can be overridden.

    Transformer fields: ``d_model``, ``heads``, ``ffn_dim``, ``norm``, ``max_positions``,
    ``activation``, ``scale_embedding``, ``output_bias``.
    RNN fields: ``d_model`` is the embedding size, ``hidden_dim`` the encoder output and decoder
    state size, ``cell`` and ``attention``. Both: layer counts, dropout, ``vocab_size`` (taken from
    the prepared corpus' tokenizer when 0).
    """

    family: Literal["transformer", "rnn"] = "transformer"
    vocab_size: int = 0
    d_model: int = 256
    enc_layers: int = 3
    dec_layers: int = 3
    heads: int = 4
    ffn_dim: int = 1024
    norm: Literal["pre", "post"] = "pre"  # pre-norm trains stably without a long warm-up
    max_positions: int = 1024
    hidden_dim: int = 512
    cell: Literal["lstm", "gru"] = "lstm"
    attention: Literal["bahdanau", "luong-dot", "luong-general"] = "bahdanau"
    dropout: float = 0.1
    # On attention weights (Transformer). 0 as in fairseq's transformer defaults: a non-zero value
    # keeps scaled_dot_product_attention off its fused kernel (measured: 16% of a CPU step).
    attention_dropout: float = 0.0
    # Transformer only, for models made elsewhere (`s2s import --from hf`; OPUS-MT uses swish,
    # scaled embeddings and an output bias): the feed-forward activation, whether token
    # embeddings are multiplied by sqrt(d_model), and a learned bias on the output logits.
    activation: Literal["relu", "swish", "gelu"] = "relu"
    scale_embedding: bool = True
    output_bias: bool = False

    def validate(self) -> None:
        """Raises ConfigError naming what to change."""
        _check_bounds(self, prefix="model.")
        if self.family == "transformer" and self.d_model % self.heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.heads={self.heads}; "
                "change one of them"
            )
        if self.family == "rnn" and self.hidden_dim % 2:
            raise ConfigError(
                f"model.hidden_dim={self.hidden_dim} must be even (two encoder directions)"
            )


# Presets are diffs over ModelConfig's defaults.
_BASE = {"d_model": 512, "enc_layers": 6, "dec_layers": 6, "heads": 8, "ffn_dim": 2048}
_RNN = {"family": "rnn", "enc_layers": 2, "dec_layers": 2, "dropout": 0.2}
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "transformer-small": {},  # d 256, 3+3 layers, ffn 1024, 4 heads
    "transformer-base": _BASE,
    "transformer-big": {**_BASE, "d_model": 1024, "heads": 16, "ffn_dim": 4096, "dropout": 0.3},
    "rnn-small": {**_RNN, "cell": "lstm", "attention": "bahdanau"},
    "gru-luong": {**_RNN, "cell": "gru", "attention": "luong-general"},
}


def model_preset(name: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The ModelConfig of preset ``name`` with ``overrides`` applied and validated, for code that
    builds a model directly (configs loaded from settings get theirs from :func:`from_dict`).

    Raises:
        ConfigError: for an unknown preset (naming the valid ones) or an invalid result.
    """
    cfg = from_dict(ModelConfig, {**_preset(name), **(overrides or {})}, where="model.")
    cfg.validate()
    return cfg


def _preset(name: str) -> dict[str, Any]:
    """What preset ``name`` changes from ModelConfig's defaults.

    Raises:
        ConfigError: for an unknown preset, naming the valid ones.
    """
    if name not in MODEL_PRESETS:
        raise ConfigError(
            f"unknown model preset {name!r}; choose one of: {', '.join(MODEL_PRESETS)}"
        )
    return MODEL_PRESETS[name]


@dataclass
class TrainConfig:
    """Settings of ``s2s train``; ``model`` starts from the ``preset`` and takes overrides."""

    data: str = ""  # a prepared corpus (s2s prepare's output)
    output: str = ""  # the run directory, local or s3://
    preset: str = "transformer-small"
    model: ModelConfig = field(default_factory=ModelConfig)
    # Fine-tune: start from this checkpoint's weights (an `s2s import`, say), with its
    # architecture in place of preset/model, and a fresh optimizer and step count. The corpus
    # must be prepared with its tokenizer (`s2s prepare --tokenizer CHECKPOINT`).
    init_from: str = ""

    # "N", or "MIN-MAX" for an elastic run: it trains on as many workers as the cluster can place
    # (at least MIN), shrinks when a node is lost and grows back when capacity returns. A step
    # always trains on MAX x update_freq batches, whatever the number of workers (see sampler.py).
    workers: str = "1"
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # CPUs reserved per worker (placement)
    # Intra-op threads per worker; 0 = the node's cores shared by the workers on that node.
    torch_threads: int = 0
    # How long to wait for an autoscaler to add the nodes MIN workers need before refusing
    # (a cluster that cannot grow is refused at once).
    wait_for_workers_s: float = 600.0
    # Elastic runs: how often Ray Train checks whether more workers could be placed.
    resize_interval_s: float = 60.0
    # Local paths on a cluster of several nodes are refused unless they are on a filesystem
    # mounted on every node (NFS, EFS): say so here.
    shared_fs: bool = False

    # Stop at whichever comes first (0 = no limit from that one; at least one must be set).
    max_steps: int = 0
    max_epochs: int = 0
    max_time_min: float = 0.0

    # Batches: a budget of padded token positions per batch, bucketed by length. An optimizer
    # step trains on MAX workers x update_freq batches (one per worker and accumulation step).
    max_tokens: int = 4000
    # global: every epoch is a new permutation of all training pairs, a function of (seed, epoch)
    # (corpora arrive grouped by source; a model that sees them in that order drifts to whatever
    # came last); each worker holds the corpus's token ids (~100 bytes a pair). buffer: shards in
    # a new order, pairs permuted within a shard (for corpora too large to hold).
    shuffle: Literal["global", "buffer"] = "global"
    shuffle_buffer: int = 10_000  # examples sorted by length together, then cut into batches
    update_freq: int = 1  # accumulate gradients over this many batches per optimizer step

    lr: float = 1e-3
    warmup: int = 300
    # inverse_sqrt: never ends. cosine/linear: decay to 0 at the end of training, by steps (with
    # max_steps) or by wall-clock (with only max_time_min: the budget's last minute trains at a
    # low rate, as a fixed-budget run should).
    schedule: Literal["inverse_sqrt", "cosine", "linear"] = "inverse_sqrt"
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    # bf16: autocast. auto: bf16 where the device computes it natively (CUDA GPUs from Ampere
    # on; CPUs with AVX512-BF16 or AMX), else fp32 (with TF32 matmuls on a GPU).
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    seed: int = 1

    log_every: int = 50
    eval_every: int = 500
    eval_sentences: int = 500  # valid pairs decoded (greedy) for BLEU/chrF at each evaluation
    checkpoint_every: int = 500
    keep_last: int = 3
    # async: workers hand the checkpoint to Ray Train and go on training while it uploads.
    checkpoint_upload: Literal["async", "sync"] = "async"
    patience: int = 0  # evaluations without a better BLEU before stopping (0 = never)
    # Restarts of the worker group from the last checkpoint after a worker or a node is lost
    # without notice (-1 = no limit). Preemptions Ray is told of (a drained spot node) are
    # retried without limit and not counted here.
    max_failures: int = 3

    def validate(self) -> None:
        """Raises ConfigError naming what to change."""
        if not self.data:
            raise ConfigError("train needs --data URI (a prepared corpus)")
        if not self.output:
            raise ConfigError("train needs --output URI (the run directory)")
        _check_bounds(self)
        if not (self.max_steps or self.max_epochs or self.max_time_min):
            raise ConfigError("set max_steps, max_epochs or max_time_min, or training never ends")
        if self.schedule != "inverse_sqrt" and not (self.max_steps or self.max_time_min):
            raise ConfigError(
                f"schedule={self.schedule} decays to 0 at the end of training: set max_steps "
                "or max_time_min so the end is known"
            )
        self.worker_range()
        self.model.validate()

    def worker_range(self) -> tuple[int, int]:
        """(min, max) workers from ``workers``: "N" or "MIN-MAX"."""
        return _size_range(self.workers, "workers", "MIN-MAX")


def train_config(data: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a mapping (a recipe YAML's), for scripts that hold one already."""
    return from_dict(TrainConfig, data)


def _model_over_preset(data: dict[str, Any], where: str) -> dict[str, Any]:
    """TrainConfig settings with the ``model`` section laid over the ``preset``'s: a section states
    only what differs. The one place this rule lives, applied when every layer of settings (file,
    flags, ``key=value``) is merged, so a preset set by any of them builds its own model."""
    preset = _coerce(data.get("preset", TrainConfig.preset), str, where + "preset")
    section = data.get("model") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}model must be a mapping, got {section!r}")
    return {**data, "model": {**_preset(preset), **section}}


# What CTranslate2 may compute in (DecodeConfig.compute_type)...
ComputeType = Literal[
    "default", "float32", "int8", "int8_float32", "float16", "bfloat16", "int8_float16",
    "int8_bfloat16",
]  # fmt: skip
# ...and the types only a GPU computes: on a CPU, CTranslate2 falls back to float32 or
# int8_float32 without a word (its docs: "implicit type conversion on load").
GPU_COMPUTE_TYPES = ("float16", "bfloat16", "int8_float16", "int8_bfloat16")


@dataclass
class DecodeConfig:
    """How a checkpoint turns source sentences into translations (shared by translate and
    evaluate, so the nightly job and the evaluation cannot drift apart)."""

    # A checkpoint directory (or, for ctranslate2, an `s2s export`), or s3://. Formerly `model`
    # (the key and --model): still read, with a warning, for one release.
    checkpoint: str = ""
    # torch: s2s's own search. ctranslate2: CTranslate2's C++ engine (Transformers only; a
    # checkpoint is exported on load, an `s2s export --format ctranslate2` directory used as is).
    engine: Literal["torch", "ctranslate2"] = "torch"
    # ctranslate2: weights at run time; "default" keeps the exported type. float16, bfloat16,
    # int8_float16 and int8_bfloat16 need use_gpu (a CPU would quietly run float32); on a GPU
    # int8_float16 is the fast one (bfloat16 and int8_bfloat16 need Ampere or newer).
    compute_type: ComputeType = "default"
    beam: int = 4  # 1 = greedy search
    length_penalty: float = 1.0  # GNMT alpha; 0 ranks beams by raw log-probability
    # At most max_len_a * source_tokens + max_len_b output tokens per sentence.
    max_len_a: float = 1.5
    max_len_b: int = 10
    # A batch holds at most this many padded source tokens (x beam rows in the decoder) and
    # at most max_sentences sentences; sentences are sorted by length first. 0 = auto: 4000 and
    # 128 on a CPU; on a GPU sized by its free memory (and the actor's share of it): 4096 to
    # 65536 tokens, 128 to 1024 sentences. A batch out of GPU memory is halved, and later
    # batches stay at most half its size.
    max_tokens: int = 0
    max_sentences: int = 0
    # Longer sentences (SentencePiece tokens) are cut into parts of this size, each translated
    # on its own, and flagged; the model never saw longer inputs in training (prepare's max_len).
    max_input_tokens: int = 250
    use_gpu: bool = False
    # How long to wait for an autoscaler to add what the translator actors (evaluate: its one
    # GPU task) need before refusing; a cluster that cannot grow is refused at once.
    wait_for_workers_s: float = 600.0
    # Local paths on a cluster of several nodes are refused unless mounted on every node.
    shared_fs: bool = False
    # bf16: autocast. auto: bf16 on GPUs that compute it natively (Ampere on), else fp32 (with
    # TF32 matmuls on a GPU); fp32 on CPUs, where bf16 decoding is not measured faster.
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    torch_threads: int = 0  # 0 = as many as CPUs reserved (translate) or all cores (evaluate)
    # Placeholders are masked by sentinels before decoding and put back after (for models whose
    # tokenizer holds the sentinels: any prepared with protect_placeholders, the default); the
    # search writes each of a sentence's sentinels exactly once (CTranslate2: only bans those no
    # source of the batch holds), and a sentence whose sentinels still do not all come back is
    # translated again unmasked. Either way one that lost some counts in placeholders_lost.
    protect_placeholders: bool = True
    # A regex of further spans to protect, as in prepare.
    placeholder_pattern: str = ""

    def validate(self) -> None:
        if not self.checkpoint:
            raise ConfigError("needs --checkpoint URI (a checkpoint directory)")
        _check_bounds(self)  # a TranslateConfig's or EvaluateConfig's own settings too
        _check_pattern(self.placeholder_pattern)
        if self.compute_type in GPU_COMPUTE_TYPES and not self.use_gpu:
            raise ConfigError(
                f"compute_type={self.compute_type} runs on a GPU only (CTranslate2 would quietly "
                "compute float32 on a CPU): set use_gpu=true, or float32, int8 or int8_float32"
            )


@dataclass
class TranslateConfig(DecodeConfig):
    """Settings of ``s2s translate``: a document set in, one output file per input file out."""

    input: str = ""  # file, directory, prefix or glob; local or s3://
    output: str = ""  # directory or prefix; one file per input file, named after it
    input_format: Literal["auto", "jsonl", "parquet", "text"] = "auto"  # text: 1 doc per file
    id_column: str = "id"
    text_column: str = "text"
    format: Literal["jsonl", "parquet", "text"] = "jsonl"
    keep_source: bool = False  # add a `source` column with the original text
    overwrite: bool = False  # translate inputs again even when their output is complete
    # Translator actors: "N" or "MIN,MAX" (the pool grows with the backlog).
    concurrency: str = "1"
    cpus_per_actor: float = 1.0
    # With use_gpu; fractions pack several actors on one GPU. Each torch actor's allocator is
    # capped at 0.95 x its share, so actors cannot take each other's memory; CTranslate2 has no
    # such cap (its actors on one GPU rely on halving a batch that runs out of memory).
    gpus_per_actor: float = 1.0
    # Work is cut into pieces of about this many input bytes (JSONL lines, Parquet row groups,
    # text files): the unit of retry and of resuming an interrupted run.
    piece_mb: float = 4.0
    # Longer documents get an error row instead of a translation (memory and time bound).
    max_document_chars: int = 1_000_000
    # One run at a time per output prefix: a lease renewed every ttl/3; a dead run's lease
    # expires after this long and the next run takes over and finishes its work.
    lease_ttl_s: float = 120.0

    def validate(self) -> None:
        super().validate()
        if not self.input:
            raise ConfigError("translate needs --input URI (documents)")
        if not self.output:
            raise ConfigError("translate needs --output URI (where translations go)")
        self.actor_pool()

    def actor_pool(self) -> tuple[int, int]:
        """(min, max) translator actors from ``concurrency``."""
        return _size_range(self.concurrency, "concurrency", "MIN,MAX")


@dataclass
class EvaluateConfig(DecodeConfig):
    """Settings of ``s2s evaluate``: BLEU and chrF of a checkpoint on held-out pairs."""

    data: str = ""  # a prepared corpus (its --split is used) or a TSV file of source<TAB>target
    split: Literal["valid", "test"] = "test"
    limit: int = 0  # evaluate only the first N pairs (0 = all)
    output: str = ""  # optional: write the scores (JSON) and hypotheses (.txt) here

    def validate(self) -> None:
        super().validate()
        if not self.data:
            raise ConfigError("evaluate needs --data URI (a prepared corpus or a TSV file)")


def _size_range(value: Any, key: str, form: str) -> tuple[int, int]:
    """(min, max) from "N" or a range written as ``form`` ("MIN-MAX" or "MIN,MAX")."""
    try:
        sizes = [int(part) for part in str(value).replace(",", "-").split("-")]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or not 1 <= sizes[0] <= sizes[1]:
        raise ConfigError(f"{key} must be N or {form} (1 <= MIN <= MAX), got {value!r}")
    return sizes[0], sizes[1]


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting may take: a finite number from ``low`` to ``high``, each end
    included unless ``open_low``/``open_high``. ``why`` is told to whoever sets a value outside."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    why: str = ""

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1)``, ..."""
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        left = "(" if self.open_low else "["
        right = ")" if self.open_high else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


# Sizes, budgets and periods: at 0 a loop never advances (a batch, a shard, a block of 0 rows) or
# a step count divides by zero.
_COUNT = Bounds(1)
_NON_NEGATIVE = Bounds(0)  # where 0 means "none" or "no limit" (the field's comment says which)
# CPUs per worker or actor (at 0 Ray would place any number of them on one node), the lr.
_POSITIVE = Bounds(0, open_low=True)
_RATE = Bounds(0, 1, open_high=True)  # dropout, label smoothing: at 1 nothing of the signal is left

# Every int and float field of every config class, with the values it may take; validate() checks
# them first, so no value can spin a loop forever, divide by zero or wait without end, and a test
# fails for a numeric field that is not listed here.
_BOUNDS: dict[type, dict[str, Bounds]] = {
    PrepareConfig: {
        "max_len": _COUNT,
        "max_ratio": Bounds(1, why="the ratio is longer side over shorter side, never below 1"),
        "ratio_min_tokens": _COUNT,
        # A line is held whole until its end is found: the bound keeps a file without line ends
        # from filling memory, and no sentence pair is longer than a 16 MiB block.
        "max_line_bytes": Bounds(1, 2**24),
        "vocab_size": Bounds(300, why="260 ids are reserved for specials and byte fallback"),
        "character_coverage": Bounds(0, 1, open_low=True),
        "tokenizer_sample": _COUNT,
        "valid_size": _NON_NEGATIVE,
        "test_size": _NON_NEGATIVE,
        "shard_rows": _COUNT,
        "read_block_rows": _COUNT,
    },
    ModelConfig: {
        "vocab_size": _NON_NEGATIVE,
        "d_model": _COUNT,
        "enc_layers": _COUNT,
        "dec_layers": _COUNT,
        "heads": _COUNT,
        "ffn_dim": _COUNT,
        # A source token and eos, bos and one output token must fit: translation cuts sources to
        # max_positions - 2 tokens.
        "max_positions": Bounds(3),
        "hidden_dim": Bounds(2),
        "dropout": _RATE,
        "attention_dropout": _RATE,
    },
    TrainConfig: {
        "cpus_per_worker": _POSITIVE,
        "torch_threads": _NON_NEGATIVE,
        # An autoscaler adds a node in minutes; a day bounds the wait of a cluster that never grows.
        "wait_for_workers_s": Bounds(0, 86_400),
        "resize_interval_s": Bounds(1, why="at 0 Ray Train would poll the cluster without pause"),
        "max_steps": _NON_NEGATIVE,
        "max_epochs": _NON_NEGATIVE,
        "max_time_min": _NON_NEGATIVE,
        "max_tokens": _COUNT,
        "shuffle_buffer": _COUNT,
        "update_freq": _COUNT,
        "lr": _POSITIVE,
        "warmup": _NON_NEGATIVE,
        "weight_decay": _NON_NEGATIVE,
        "clip_norm": _NON_NEGATIVE,  # 0: no clipping
        "label_smoothing": _RATE,
        # NumPy's generators take seeds >= 0; torch's must stay within 64 bits once the step and
        # rank are mixed in (see train.py).
        "seed": Bounds(0, 2**32 - 1),
        "log_every": _COUNT,
        "eval_every": _COUNT,
        "eval_sentences": _COUNT,
        "checkpoint_every": _COUNT,
        "keep_last": _COUNT,
        "patience": _NON_NEGATIVE,
        "max_failures": Bounds(-1, why="-1 means no limit"),
    },
    DecodeConfig: {
        "beam": _COUNT,
        "length_penalty": _NON_NEGATIVE,
        # The output length limit is what stops a decoder that never emits eos: no translation
        # is 10x its source, or more than 1000 tokens past it.
        "max_len_a": Bounds(0, 10),
        "max_len_b": Bounds(0, 1000),
        "max_tokens": _NON_NEGATIVE,  # 0: auto (sized for the device)
        "max_sentences": _NON_NEGATIVE,
        "max_input_tokens": _COUNT,
        "torch_threads": _NON_NEGATIVE,
        "wait_for_workers_s": Bounds(0, 86_400),  # as for training
    },
    TranslateConfig: {
        "cpus_per_actor": _POSITIVE,
        # A translator computes on one device: more than one GPU per actor would sit idle.
        "gpus_per_actor": Bounds(0, 1, open_low=True),
        # ~100 bytes: smaller pieces are smaller than a line and only add work items (and below
        # one byte the cutting would never advance).
        "piece_mb": Bounds(1e-4),
        "max_document_chars": _COUNT,
        # The holder renews the lease every ttl/3 (s2s/lease.py), so two renewals' latency must fit
        # in the other 2/3: 4 s at the minimum. A dead run's lease blocks the output until it
        # expires: at most an hour.
        "lease_ttl_s": Bounds(6, 3600, why="the lease is renewed every ttl/3"),
    },
    EvaluateConfig: {"limit": _NON_NEGATIVE},  # 0: all pairs
}


def numeric_bounds(cls: type) -> dict[str, Bounds]:
    """The bounds of every numeric setting of config class ``cls``, its base classes' included."""
    merged: dict[str, Bounds] = {}
    for base in reversed(cls.__mro__):
        merged.update(_BOUNDS.get(base, {}))
    return merged


def _check_pattern(pattern: str) -> None:
    """Refuse a placeholder_pattern that is no regex, or that matches an empty span."""
    if not pattern:
        return
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ConfigError(
            f"placeholder_pattern {pattern!r} is no regular expression: {err}"
        ) from None
    if compiled.fullmatch(""):
        raise ConfigError(f"placeholder_pattern {pattern!r} matches empty text; it must not")


def _check_bounds(cfg: Any, prefix: str = "") -> None:
    """Refuse a numeric setting that is out of its bounds, NaN, infinite or not a number.

    Raises:
        ConfigError: naming the setting, its value and the allowed range.
    """
    hints = typing.get_type_hints(type(cfg))
    for key, bounds in numeric_bounds(type(cfg)).items():
        value = getattr(cfg, key)
        integer = hints[key] is int
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or not bounds.admits(value):
            why = f" ({bounds.why})" if bounds.why else ""
            raise ConfigError(
                f"{prefix}{key} must be {'an integer' if integer else 'a number'} "
                f"{bounds.describe()}, got {value!r}{why}"
            )


C = TypeVar("C")


def load_config(
    cls: type[C],
    path: str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> C:
    """The settings of ``cls``: defaults < the YAML file at ``path`` < ``flags`` < ``overrides``.

    The one loader of every stage, the CLI and the pipeline. Layers merge section by section before
    anything is built, so a later layer changes a single key of a section, and a ``preset`` from any
    layer builds its model (see :func:`from_dict`). Nothing is validated here: each stage validates
    the config it is given, once.

    Args:
        cls: the config dataclass (a stage's, or the pipeline's with a section per stage).
        path: a YAML file of settings; it states only what differs from the defaults.
        overrides: ``key=value`` words, the last word; values parse as YAML (``max_len=128``,
            ``inputs=[a.tsv,b.tsv]``), dotted keys reach into sections (``train.model.heads=8``).
        flags: settings already parsed (command-line flags), dotted keys as in ``overrides``.

    Raises:
        ConfigError: in one line, for a missing or unparsable file, a file or section that is not a
            mapping, a malformed override, an unknown key or preset, or a badly typed value.
    """
    words = [_parse_override(item) for item in overrides or []]
    layers = [_read_yaml(path) if path else {}]
    layers += [_nested(key, value) for key, value in [*(flags or {}).items(), *words]]
    return from_dict(cls, functools.reduce(_merge, layers))


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from a plain dict, coercing each value to its field's type. A
    TrainConfig's ``model`` section (at any depth) states only what differs from its ``preset``;
    a decode config's former key ``model`` is read as ``checkpoint``, with a warning.

    Args:
        cls: the config dataclass.
        data: keys are field names; nested dataclass fields take nested dicts.
        where: prefix of the keys, for error messages of nested configs.

    Raises:
        ConfigError: for an unknown key or preset, a value that does not fit the field's type, or
            a renamed key given under both its names.
    """
    if cls is TrainConfig:
        data = _model_over_preset(data, where)
    data = _renamed_keys(cls, data, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(where + key, key, names))
        kwargs[key] = _coerce(value, hints[key], where + key)
    return cls(**kwargs)


# Keys renamed, still read for one release with a warning: (config class, old key, new key).
_RENAMED_KEYS = [(DecodeConfig, "model", "checkpoint")]


def _renamed_keys(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` with each old key of ``cls`` under its new name, and a warning for it; the one
    place renamed keys are read, whichever layer (file, flag, ``key=value``, a script's dict) set
    them.

    Raises:
        ConfigError: when both the old key and the new one are given.
    """
    for owner, old, new in _RENAMED_KEYS:
        if not (issubclass(cls, owner) and old in data):
            continue
        if new in data:
            raise ConfigError(
                f"config keys {where + old!r} and {where + new!r} both given: {old!r} is the "
                f"deprecated name of {new!r}; give only {new!r}"
            )
        warn_deprecated(f"config key {where + old!r}", repr(where + new))
        data = {new if key == old else key: value for key, value in data.items()}
    return data


def warn_deprecated(old: str, new: str) -> None:
    """One line on stderr: ``old`` (a flag or a config key) still works, but ``new`` replaces it."""
    print(f"s2s: warning: {old} is deprecated; use {new}", file=sys.stderr)


def _read_yaml(path: str) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (an empty file is an empty one).

    Raises:
        ConfigError: in one line, naming the file: missing, not YAML, or not a mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    """``(key, value)`` of a ``key=value`` word, the value parsed as YAML.

    Raises:
        ConfigError: when the word is not of that form.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    return key.strip(), _parse_scalar(raw)


def _nested(key: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for the dotted key ``a.b``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _merge(below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """``above`` laid over ``below``, section by section: a layer changes only the keys it names."""
    merged = dict(below)
    for key, value in above.items():
        under = merged.get(key)
        both = isinstance(under, dict) and isinstance(value, dict)
        merged[key] = _merge(under, value) if both else value
    return merged


def _unknown_key_message(full_key: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
    return f"unknown config key {full_key!r}{hint}"


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Coerce ``value`` to the annotated type ``hint`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not one of: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return from_dict(hint, value, where=key + ".")
    if hint is bool:
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if hint is int:
            if not number.is_integer():
                raise ConfigError(f"{key} must be an integer, got {value!r}")
            return int(number)
        return number
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value
