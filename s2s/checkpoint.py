"""The hand-off from training to translation: a checkpoint directory, local or ``s3://``.

Contract (shared/DESIGN.md)::

    model.safetensors    weights of the unwrapped model, no pickled code
    config.yaml          the ModelConfig that rebuilds it
    tokenizer.model      the SentencePiece model it was trained with
    target_tokenizer.model  optional: the target side's, where it segments differently
    trainer_state.json   step, epoch, best metric, data position, ... (:class:`TrainerState`)
    optimizer.pt         optimizer state, loaded with weights_only=True

Loading for translation needs neither Ray nor the training code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from s2s import storage
from s2s.config import ConfigError, ModelConfig, from_dict
from s2s.models import build_model
from s2s.tokenizer import TARGET_TOKENIZER_FILE, TOKENIZER_FILE, Tokenizer, TokenizerFiles

__all__ = [
    "Checkpoint",
    "TrainerState",
    "save_checkpoint",
    "load_checkpoint",
    "validate_checkpoint",
    "load_optimizer_state",
    "load_weights",
    "read_model_config",
    "restore_training",
    "list_checkpoints",
    "average_checkpoints",
]

WEIGHTS, CONFIG, TOKENIZER, TARGET_TOKENIZER, STATE, OPTIMIZER = (
    "model.safetensors",
    "config.yaml",
    TOKENIZER_FILE,
    TARGET_TOKENIZER_FILE,
    "trainer_state.json",
    "optimizer.pt",
)
# Ray Train's record, in the run directory, of the checkpoints it registered (uploaded in full).
_RAY_CHECKPOINTS = "checkpoint_manager_snapshot.json"


@dataclass
class TrainerState:
    """Where a run stands: what ``trainer_state.json`` holds and a resumed run restarts from.

    The file is the contract (shared/DESIGN.md); this class is its only reader and writer. Reading
    is tolerant both ways: a key an older file lacks takes its default here, and a key this
    version does not know is kept in ``extra`` and written back as it was read, so loading and
    saving a state never loses what another version of s2s (or a person) put there. The file
    leaves out ``resumed_from`` and ``averaged_from`` while they are empty: their absence means
    "never resumed" and "not an average". Keys are written in the order of the fields (the order
    training has always written them), then the ``extra`` ones.
    """

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch trained on, all workers together
    best_bleu: float | None = None  # the best validation BLEU so far; None before the first
    bad_evals: int = 0  # evaluations in a row without a better BLEU (what patience counts)
    tgt_tokens_seen: int = 0  # target tokens trained on, all workers, since step 0
    elapsed_s: float = 0.0  # training seconds, over every session of the run (time budgets)
    data_digest: str = ""  # hash chain of every step's token ids (s2s.sampler.DataDigest)
    resumed_from: list[int] = field(default_factory=list)  # the step of each restart
    averaged_from: list[str] = field(default_factory=list)  # the URIs a mean was taken of
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    # Omitted from the file while empty (see the class docstring).
    _OPTIONAL = ("resumed_from", "averaged_from")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``trainer_state.json`` (a fresh copy)."""
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        extra = data.pop("extra")
        for name in self._OPTIONAL:
            if not data[name]:
                del data[name]
        return {**data, **extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainerState:
        """Read a trainer state's JSON object: missing keys take their defaults, unknown ones go
        to ``extra``.

        Raises:
            TypeError: if ``data`` is not a mapping (a file holding a JSON list, say).
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a trainer state is a JSON object, not {type(data).__name__}")
        data = copy.deepcopy(dict(data))  # the state shares no list with the caller's object
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        state = cls(**{k: v for k, v in data.items() if k in known})
        state.extra = {k: v for k, v in data.items() if k not in known}
        return state

    def to_json(self) -> str:
        """The text of ``trainer_state.json``. It round-trips: for any state ``s``,
        ``TrainerState.from_json(s.to_json()) == s`` and so gives ``s.to_json()`` again."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainerState:
        """Parse the text of ``trainer_state.json`` (see :meth:`from_dict`).

        Raises:
            ValueError: if ``text`` is not JSON.
            TypeError: if it is not a JSON object.
        """
        return cls.from_dict(json.loads(text))


@dataclass
class Checkpoint:
    """A checkpoint loaded for use: the model rebuilt in eval mode, and what came with it."""

    model: nn.Module
    model_config: ModelConfig
    tokenizer: Tokenizer  # encodes sources
    trainer_state: TrainerState
    model_id: str  # "<directory name>@step<N>:<sha256 of the weights, 12 hex>"
    target_tokenizer: Tokenizer  # decodes outputs: ``tokenizer`` unless the target has its own


def save_checkpoint(
    uri: str,
    model: nn.Module,
    model_config: ModelConfig,
    tokenizer_proto: bytes,
    trainer_state: TrainerState | Mapping[str, Any],
    optimizer_state: dict | None = None,
    target_tokenizer_proto: bytes | None = None,
) -> None:
    """Write a checkpoint directory; ``trainer_state.json`` goes last and marks it complete.

    Args:
        model: the *unwrapped* module (not the DDP wrapper), so names carry no ``module.``.
        target_tokenizer_proto: the target side's SentencePiece model, where it differs from
            the source side's ``tokenizer_proto`` (over the same vocabulary).
        trainer_state: the run's state; a plain dict (``{"step": 0}``) is read as
            :meth:`TrainerState.from_dict` reads one.
    """
    if not isinstance(trainer_state, TrainerState):
        trainer_state = TrainerState.from_dict(trainer_state)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    storage.write_bytes(storage.join(uri, WEIGHTS), save_safetensors(weights))
    config = {"model": dataclasses.asdict(model_config)}
    storage.write_bytes(storage.join(uri, CONFIG), yaml.safe_dump(config, sort_keys=False).encode())
    storage.write_bytes(storage.join(uri, TOKENIZER), tokenizer_proto)
    if target_tokenizer_proto is not None:
        storage.write_bytes(storage.join(uri, TARGET_TOKENIZER), target_tokenizer_proto)
    if optimizer_state is not None:
        buffer = io.BytesIO()
        torch.save(optimizer_state, buffer)
        storage.write_bytes(storage.join(uri, OPTIMIZER), buffer.getvalue())
    storage.write_bytes(storage.join(uri, STATE), trainer_state.to_json().encode())


def load_weights(uri: str, model: nn.Module) -> None:
    """Load a checkpoint's safetensors weights into ``model`` (strictly: names and shapes)."""
    model.load_state_dict(load_safetensors(storage.read_bytes(storage.join(uri, WEIGHTS))))


def read_model_config(uri: str) -> ModelConfig:
    """The ModelConfig of a checkpoint (its ``config.yaml``), without loading the weights."""
    config = yaml.safe_load(storage.read_bytes(storage.join(uri, CONFIG)))
    return from_dict(ModelConfig, config["model"], where="model.")


def restore_training(uri: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainerState:
    """Put a run back where a checkpoint left it; return its trainer state (which holds what
    the learning rate follows: step and elapsed time)."""
    load_weights(uri, model)
    saved = load_optimizer_state(uri)
    optimizer.load_state_dict(saved["optimizer"])
    return _read_state(uri)


def _read_state(checkpoint: str) -> TrainerState:
    return TrainerState.from_json(storage.read_bytes(storage.join(checkpoint, STATE)))


def load_checkpoint(uri: str, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint from its config and weights, in eval mode.

    Raises:
        ConfigError: one line, if the checkpoint is incomplete or damaged (see
            :func:`validate_checkpoint`).
    """
    model_config, state, weights, (tokenizer, target) = _read_checked(uri)
    model = build_model(model_config)
    model.load_state_dict(load_safetensors(weights))
    model.to(device).eval()
    return Checkpoint(model, model_config, tokenizer, state, _model_id(uri, state, weights), target)


def validate_checkpoint(uri: str) -> str:
    """Check a checkpoint fully before any work is handed out, without building its model, and
    return its id (see :func:`_read_checked` for what is checked).

    Raises:
        ConfigError: one line naming the checkpoint and what is wrong with it.
    """
    _, state, weights, _ = _read_checked(uri)
    return _model_id(uri, state, weights)


def _read_checked(
    uri: str,
) -> tuple[ModelConfig, TrainerState, bytes, tuple[Tokenizer, Tokenizer]]:
    """(model config, trainer state, weights, (source, target) tokenizers) of a checkpoint, read
    once and checked: every file present, the config a valid ModelConfig, the weights a whole
    safetensors file whose tensor names and shapes are those of the model the config builds
    (built on the meta device: no memory), the tokenizers loadable with the config's vocabulary
    size.

    Raises:
        ConfigError: one line naming the checkpoint and what is wrong with it.
    """
    files = {name: storage.join(uri, name) for name in (WEIGHTS, CONFIG, TOKENIZER, STATE)}
    missing = [name for name, path in files.items() if not storage.exists(path)]
    if missing:
        raise ConfigError(f"{uri}: not a complete checkpoint: no {', '.join(missing)}")
    try:
        config = yaml.safe_load(storage.read_bytes(files[CONFIG]))
        model_config = from_dict(ModelConfig, config["model"], where="model.")
        state = TrainerState.from_json(storage.read_bytes(files[STATE]))
    except (yaml.YAMLError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{uri}: unreadable {CONFIG} or {STATE}: {err}") from None
    weights = storage.read_bytes(files[WEIGHTS])
    shapes = _safetensors_shapes(weights, files[WEIGHTS])
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in build_model(model_config).state_dict().items()}
    if shapes != expected:
        wrong = sorted(set(shapes) ^ set(expected)) or [
            k for k in expected if shapes[k] != expected[k]
        ]
        raise ConfigError(
            f"{uri}: {WEIGHTS} does not match {CONFIG} ({len(wrong)} tensors differ, e.g. "
            f"{wrong[0]}: {shapes.get(wrong[0])} in the weights, {expected.get(wrong[0])} "
            "for the config)"
        )
    tokenizer = _read_tokenizer(files[TOKENIZER], model_config)
    target_path = storage.join(uri, TARGET_TOKENIZER)
    target = (
        _read_tokenizer(target_path, model_config) if storage.exists(target_path) else tokenizer
    )
    return model_config, state, weights, (tokenizer, target)


def _read_tokenizer(path: str, model_config: ModelConfig) -> Tokenizer:
    """A checkpoint's SentencePiece model, checked against the model's vocabulary size."""
    try:
        tokenizer = Tokenizer(storage.read_bytes(path), name=path)
    except Exception as err:  # SentencePiece raises RuntimeError/OSError on a bad model
        raise ConfigError(f"{path}: not a SentencePiece model: {err}") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise ConfigError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} pieces, the model "
            f"{model_config.vocab_size}"
        )
    return tokenizer


def _safetensors_shapes(data: bytes, where: str) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header, checking that the data it
    describes is all there (a truncated upload fails here, not in a loader far away)."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        header.pop("__metadata__", None)
        end = max((t["data_offsets"][1] for t in header.values()), default=0)
    except (struct.error, ValueError, TypeError, KeyError, IndexError) as err:
        raise ConfigError(f"{where}: not a safetensors file ({err})") from None
    if len(data) < 8 + size + end:
        raise ConfigError(
            f"{where}: truncated: {len(data):,} bytes, the header describes {8 + size + end:,}"
        )
    return {name: list(t["shape"]) for name, t in header.items()}


def _model_id(uri: str, state: TrainerState, weights: bytes) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return f"{name}@step{state.step}:{hashlib.sha256(weights).hexdigest()[:12]}"


def load_optimizer_state(uri: str) -> dict | None:
    """The optimizer state of a checkpoint, or None; never unpickles code."""
    path = storage.join(uri, OPTIMIZER)
    if not storage.exists(path):
        return None
    # To the CPU first: a GPU checkpoint resumes on a CPU, and no worker of a node piles its
    # copy onto cuda:0. The optimizer's load_state_dict moves it next to its parameters.
    return torch.load(io.BytesIO(storage.read_bytes(path)), weights_only=True, map_location="cpu")


def list_checkpoints(run: str) -> list[tuple[int, str]]:
    """(step, URI) of the complete ``checkpoint_*`` directories of a run, by step (``best/`` is
    a copy of one of them and left out).

    Checkpoints upload in the background, file by file: a directory whose upload a lost node
    cut short has some files and not others. Where Ray Train's record of the checkpoints it
    registered (uploaded in full) is there, only those count.
    """
    snapshot = storage.join(run, _RAY_CHECKPOINTS)
    registered = None
    if storage.exists(snapshot):
        results = json.loads(storage.read_bytes(snapshot)).get("checkpoint_results", [])
        registered = {r["checkpoint_dir_name"] for r in results}
    found = []
    for ref in storage.expand(storage.join(run, "checkpoint_*", STATE)):
        directory = ref.uri.rsplit("/", 1)[0]
        if registered is not None and directory.rsplit("/", 1)[1] not in registered:
            continue
        found.append((TrainerState.from_json(storage.read_bytes(ref.uri)).step, directory))
    return sorted(found)


def average_checkpoints(run: str, last: int, output: str) -> list[str]:
    """Average the parameters of the ``last`` checkpoints of a run (as fairseq and Marian do).

    Returns:
        The URIs of the checkpoints averaged, oldest first.

    Raises:
        ValueError: if the run holds fewer than ``last`` checkpoints.
    """
    chosen = [uri for _, uri in list_checkpoints(run)[-last:]]
    if len(chosen) < last:
        raise ValueError(f"{run} holds {len(chosen)} checkpoints, fewer than --last {last}")
    total: dict[str, torch.Tensor] = {}
    for uri in chosen:
        weights = load_safetensors(storage.read_bytes(storage.join(uri, WEIGHTS)))
        for name, tensor in weights.items():
            total[name] = total.get(name, 0) + tensor.double()
    averaged = {name: (t / len(chosen)).float().contiguous() for name, t in total.items()}
    newest = chosen[-1]
    storage.write_bytes(storage.join(output, WEIGHTS), save_safetensors(averaged))
    storage.write_bytes(
        storage.join(output, CONFIG), storage.read_bytes(storage.join(newest, CONFIG))
    )
    TokenizerFiles.read(newest).write(output)
    state = _read_state(newest)  # the newest's step and history, and what it was averaged from
    state.averaged_from = chosen
    storage.write_bytes(storage.join(output, STATE), state.to_json().encode())
    return chosen
