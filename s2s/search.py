"""Decoding over the :class:`s2s.models.Seq2Seq` interface, whatever the model family."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from s2s.models import Seq2Seq
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["greedy_search", "beam_search", "Hypothesis", "length_penalty"]


@torch.inference_mode()
def greedy_search(
    model: Seq2Seq,
    src: Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    max_len_cap: int | None = None,
) -> list[list[int]]:
    """Most likely next token at every step, for a batch, until every row has ended.

    Args:
        model: any Seq2Seq, in eval mode.
        src: (B, S) source ids with eos, right-padded.
        max_len_a, max_len_b: at most ``a * source_length + b`` output tokens per row...
        max_len_cap: ...and never more than this (a Transformer's positions end somewhere).

    Returns:
        Token ids per row, without bos/eos.
    """
    batch = src.shape[0]
    (src != PAD_ID).sum(1)
    limit = _limits(src, max_len_a, max_len_b, max_len_cap)  # (B,)
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


def _limits(src: Tensor, a: float, b: int, cap: int | None) -> Tensor:
    """(B,) maximum output length of each row: a * source length + b, at most ``cap``."""
    limit = ((src != PAD_ID).sum(1).float() * a + b).long().clamp(min=1)
    return limit.clamp(max=cap) if cap else limit


def _until_eos(row: list[int]) -> list[int]:
    ids = []
    for token in row:
        if token in (EOS_ID, PAD_ID):
            break
        ids.append(token)
    return ids


@dataclass
class Hypothesis:
    """One finished translation: token ids (no bos/eos), its length-normalised score and its
    total log-probability (eos included when the hypothesis ended with one)."""

    tokens: list[int]
    score: float
    log_prob: float


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + |Y|) / 6) ** alpha (Wu et al. 2016); alpha 0 ranks by raw log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.inference_mode()
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    beam: int = 4,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    alpha: float = 1.0,
    nbest: int = 1,
    max_len_cap: int | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``nbest`` best hypotheses per source, best first.

    Every source keeps ``beam`` live prefixes; a prefix that emits eos moves to that source's
    finished list, scored ``log_prob / length_penalty``. A source is done when it has ``beam``
    finished hypotheses or reaches ``max_len_a * source_length + max_len_b`` tokens; done sources
    leave the batch, so the decoder only runs on live rows.

    Args:
        model: any Seq2Seq in eval mode.
        src: (B, S) source ids with eos, right-padded.
        beam: prefixes kept per source (1 = greedy).
        alpha: length-penalty exponent.
        nbest: hypotheses returned per source (<= beam).
        max_len_cap: output length limit whatever the source length.
    """
    batch, k = src.shape[0], beam
    limits = _limits(src, max_len_a, max_len_b, max_len_cap).tolist()
    rows = torch.arange(batch, device=src.device).repeat_interleave(k)
    state = model.reorder_state(model.encode(src), rows)  # (B*k, ...)
    # Only the first prefix of each source is live at step 0 (all k start identical).
    scores = torch.full((batch, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0
    prefixes: list[list[int]] = [[] for _ in range(batch * k)]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = list(range(batch))  # source index of each live block of k rows
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=src.device)
    step = 0
    while active:
        log_probs, state = model.decode_step(prev, state)  # (A*k, V)
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(len(active), k * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=-1)  # 2k: enough left after eos
        keep_rows, next_tokens, next_scores, next_prefixes, still = [], [], [], [], []
        for a, source in enumerate(active):
            at_limit = step + 1 >= limits[source]
            chosen = []
            for cand_score, cand in zip(top_scores[a].tolist(), top_ids[a].tolist()):
                row, token = a * k + cand // vocab, cand % vocab
                if cand_score == float("-inf"):
                    break
                if token == EOS_ID or at_limit:
                    tokens = prefixes[row] + ([] if token == EOS_ID else [token])
                    finished[source].append(
                        Hypothesis(
                            tokens, cand_score / length_penalty(len(tokens) + 1, alpha), cand_score
                        )
                    )
                else:
                    chosen.append((row, token, cand_score))
                if len(chosen) == k or len(finished[source]) >= k:
                    break
            if len(finished[source]) >= k or at_limit or not chosen:
                continue  # this source is done
            chosen += [chosen[-1][:2] + (float("-inf"),)] * (k - len(chosen))  # pad dead rows
            still.append(source)
            for row, token, cand_score in chosen:
                keep_rows.append(row)
                next_tokens.append(token)
                next_scores.append(cand_score)
                next_prefixes.append(prefixes[row] + [token])
        if not still:
            break
        index = torch.tensor(keep_rows, device=src.device)
        state = model.reorder_state(state, index)
        prev = torch.tensor(next_tokens, device=src.device)
        scores = torch.tensor(next_scores, device=src.device).view(len(still), k)
        prefixes, active, step = next_prefixes, still, step + 1
    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]
