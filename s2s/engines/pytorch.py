"""s2s's own decoding engine: the checkpoint's model in torch, searched by :mod:`s2s.search`.

Loading caps this process's share of a shared GPU before the model takes memory, picks the
precision (bf16 autocast where the device computes it natively, else fp32 on TF32 tensor cores)
and measures what is left for the translator's batches.
"""

from __future__ import annotations

import torch

from s2s.batching import collate
from s2s.checkpoint import load_checkpoint, validate_checkpoint
from s2s.config import DecodeConfig
from s2s.device import (
    autocast,
    cap_memory,
    enable_tf32,
    resolve_precision,
    shape_stable_attention,
)
from s2s.placeholders import SENTINELS, hold_sentinels
from s2s.search import Sentinels, beam_search, greedy_search
from s2s.tokenizer import Tokenizer

__all__ = ["TorchEngine"]


class TorchEngine:
    """A checkpoint's model on a torch device; greedy search at beam 1, else beam search.

    Implements :class:`s2s.engines.Engine`. ``model`` is the :class:`s2s.models.Seq2Seq` in eval
    mode, on ``device``.
    """

    def __init__(self, cfg: DecodeConfig, device: torch.device, gpu_share: float = 1.0) -> None:
        """Load ``cfg.checkpoint`` onto ``device``. ``gpu_share`` under 1 caps torch's allocator at
        that part of the GPU, so processes sharing it cannot take each other's memory.

        Raises:
            ConfigError: a damaged checkpoint.
        """
        self.cfg = cfg
        self.device = device
        fraction = cap_memory(gpu_share, device)  # before the model takes its part
        ckpt = load_checkpoint(cfg.checkpoint, device)
        self.model, self.model_id = ckpt.model, ckpt.model_id
        self.tokenizer, self.target_tokenizer = ckpt.tokenizer, ckpt.target_tokenizer
        self.sentinels = _sentinels(self.tokenizer, self.target_tokenizer, device)
        # A Transformer's positions run out: source and output (after bos) must fit them.
        is_transformer = ckpt.model_config.family == "transformer"
        max_positions = ckpt.model_config.max_positions if is_transformer else None
        self.max_len_cap = max_positions - 1 if max_positions else None
        # auto: bf16 where the GPU computes it natively, else fp32 (on TF32 tensor cores where a
        # GPU has them); always fp32 on a CPU, where bf16 decoding is no faster.
        self.precision = resolve_precision(cfg.precision, device, cpu_bf16=False)
        if self.precision == "fp32":
            enable_tf32(device)
        shape_stable_attention(device)  # a decoder's cache grows every step: a new shape
        self.memory_left = None
        if device.type == "cuda":
            self.memory_left = _gpu_memory_left(device, fraction or 1.0)

    @staticmethod
    def cuda_device_count() -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    @staticmethod
    def checked_model_id(uri: str) -> str:
        return validate_checkpoint(uri)

    def decode(self, sources: list[list[int]]) -> list[list[int]]:
        """Output ids per source (see :meth:`s2s.engines.Engine.decode`); beam search keeps
        each source's best hypothesis. A model trained with placeholder sentinels writes each
        sentinel of its source exactly once and no other (s2s.search.Sentinels)."""
        src = collate([(ids, []) for ids in sources])["src"].to(self.device)  # (B, S) with eos
        cfg = self.cfg
        with autocast(self.precision, self.device):
            if cfg.beam == 1:
                return greedy_search(
                    self.model,
                    src,
                    cfg.max_len_a,
                    cfg.max_len_b,
                    max_len_cap=self.max_len_cap,
                    sentinels=self.sentinels,
                )
            hyps = beam_search(
                self.model,
                src,
                cfg.beam,
                cfg.max_len_a,
                cfg.max_len_b,
                alpha=cfg.length_penalty,
                max_len_cap=self.max_len_cap,
                sentinels=self.sentinels,
            )
        return [h[0].tokens for h in hyps]


def _sentinels(source: Tokenizer, target: Tokenizer, device: torch.device) -> Sentinels | None:
    """The sentinels' ids in both vocabularies, or None where a tokenizer lacks them (a model
    trained without protection, or imported)."""
    if not hold_sentinels(source, target):
        return None
    ids = [tok.piece_to_id(list(SENTINELS)) for tok in (source, target)]
    return Sentinels(*(torch.tensor(i, dtype=torch.long, device=device) for i in ids))


def _gpu_memory_left(device: torch.device, fraction: float) -> int:
    """Bytes this process may still allocate on ``device``: free memory, within the share of the
    device its allocator is capped at (``fraction``, see s2s.device.cap_memory)."""
    free, total = torch.cuda.mem_get_info(device)
    cap = total * fraction - torch.cuda.memory_reserved(device)
    return int(max(0, min(free, cap)))
