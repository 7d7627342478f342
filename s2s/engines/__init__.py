"""Decoding engines behind one small interface: source ids in, output ids out.

:class:`~s2s.translator.Translator` segments, batches and accounts; an :class:`Engine` turns one
batch of source id lists into output id lists and says what the translator must know to batch
for it (tokenizer, model id, device, output cap, free GPU memory). The translator never asks
which engine it holds: :func:`load_engine` picks one by ``cfg.engine``, and a new engine is one
file with one class plus one line in :func:`engine_class`.

  torch        s2s/engines/pytorch.py: s2s's own search (:mod:`s2s.search`) on the checkpoint
  ctranslate2  s2s/engines/ctranslate2.py: CTranslate2's C++ engine on an `s2s export` of it
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

from s2s.config import ConfigError, DecodeConfig
from s2s.tokenizer import Tokenizer

__all__ = ["Engine", "engine_class", "load_engine", "engine_model_id"]


class Engine(Protocol):
    """What the translator asks of a loaded model, whichever engine runs it.

    Attributes:
        tokenizer: the SentencePiece tokenizer of the sources (ids into :meth:`decode`).
        target_tokenizer: that of the outputs (ids out of it): ``tokenizer`` itself unless the
            model's target side segments differently (over the same vocabulary).
        model_id: the id every translation made with it carries (``checkpoint@step...``).
        device: where it decodes.
        precision: what it computes in, as the engine names it (``fp32``/``bf16`` for torch, a
            CTranslate2 compute type such as ``int8_float16``).
        max_len_cap: the most tokens an output may have, and a source with its eos: the model's
            position table less the one bos takes; None where there is no table (an RNN).
        memory_left: bytes the engine may still allocate on a GPU, for sizing the batches;
            None where not known (a CPU, an allocator outside torch).
    """

    tokenizer: Tokenizer
    target_tokenizer: Tokenizer
    model_id: str
    device: torch.device
    precision: str
    max_len_cap: int | None
    memory_left: int | None

    def __init__(self, cfg: DecodeConfig, device: torch.device, gpu_share: float) -> None:
        """Load ``cfg.checkpoint`` onto ``device``, a part ``gpu_share`` of which this process holds
        (Ray's num_gpus; 1 on a CPU), to decode with ``cfg``'s search settings.

        Raises:
            ConfigError: a damaged model directory, or one this engine cannot run.
        """
        ...

    @staticmethod
    def cuda_device_count() -> int:
        """CUDA devices this engine can see (before anything is loaded)."""
        ...

    @staticmethod
    def checked_model_id(uri: str) -> str:
        """The model id of the model directory at ``uri``, after checking that it is whole,
        without loading the model.

        Raises:
            ConfigError: a model directory that is missing a file or damaged.
        """
        ...

    def decode(self, sources: list[list[int]]) -> list[list[int]]:
        """Translate one batch: per sentence its source ids (no eos) -> its output ids (no
        bos or eos), each within ``max_len_a * (len + 1) + max_len_b`` and ``max_len_cap``.

        Raises:
            RuntimeError: out of memory (see :func:`s2s.translator.is_out_of_memory`) or a
                failure of the engine, which the translator bisects.
        """
        ...


def engine_class(name: str) -> type[Engine]:
    """The engine called ``name`` in DecodeConfig.engine (imported on first use: ctranslate2
    is an optional package)."""
    if name == "ctranslate2":
        from s2s.engines.ctranslate2 import CTranslate2Engine

        return CTranslate2Engine
    from s2s.engines.pytorch import TorchEngine

    return TorchEngine


def load_engine(cfg: DecodeConfig, device: str | None = None, gpu_share: float = 1.0) -> Engine:
    """Load the model of ``cfg`` into its engine on ``device`` (default: ``cuda`` with use_gpu,
    else ``cpu``). ``gpu_share``: the part of the GPU this process was given (Ray's num_gpus).

    Raises:
        ConfigError: a damaged model directory, or use_gpu where no GPU is visible.
    """
    engine = engine_class(cfg.engine)
    return engine(cfg, _device(cfg, device, engine), gpu_share)


def engine_model_id(cfg: DecodeConfig) -> str:
    """The id translations made with ``cfg`` carry, after checking the model directory whole
    without loading the model.

    Raises:
        ConfigError: a model directory that is missing a file or damaged.
    """
    return engine_class(cfg.engine).checked_model_id(cfg.checkpoint)


def _device(cfg: DecodeConfig, device: str | None, engine: type[Engine]) -> torch.device:
    """The device to decode on.

    Raises:
        ConfigError: a GPU asked for that this process cannot see (one line, not CUDA's trace).
    """
    chosen = torch.device(device or ("cuda" if cfg.use_gpu else "cpu"))
    if chosen.type == "cuda" and engine.cuda_device_count() == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        raise ConfigError(
            f"use_gpu=true but this process sees no CUDA device (CUDA_VISIBLE_DEVICES={visible})"
        )
    return chosen
