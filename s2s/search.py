"""Decoding over the :class:`s2s.models.Seq2Seq` interface, whatever the model family."""

from __future__ import annotations

import torch
from torch import Tensor

from s2s.models import Seq2Seq
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["greedy_search"]


@torch.inference_mode()
def greedy_search(
    model: Seq2Seq, src: Tensor, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[list[int]]:
    """Most likely next token at every step, for a batch, until every row has ended.

    Args:
        model: any Seq2Seq, in eval mode.
        src: (B, S) source ids with eos, right-padded.
        max_len_a, max_len_b: at most ``a * source_length + b`` output tokens per row.

    Returns:
        Token ids per row, without bos/eos.
    """
    batch = src.shape[0]
    src_len = (src != PAD_ID).sum(1)
    limit = (max_len_a * src_len.float() + max_len_b).long()  # (B,)
    state = model.encode(src)
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    out = []
    for step in range(int(limit.max())):
        log_probs, state = model.decode_step(prev, state)
        prev = log_probs.argmax(dim=-1)
        prev = torch.where(finished, torch.full_like(prev, PAD_ID), prev)
        out.append(prev)
        finished |= (prev == EOS_ID) | (step + 1 >= limit)
        if finished.all():
            break
    rows = torch.stack(out, dim=1).tolist()  # (B, steps)
    return [_until_eos(row) for row in rows]


def _until_eos(row: list[int]) -> list[int]:
    ids = []
    for token in row:
        if token in (EOS_ID, PAD_ID):
            break
        ids.append(token)
    return ids
