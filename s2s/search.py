"""Decoding over the :class:`s2s.models.Seq2Seq` interface, whatever the model family.

``greedy_search`` and ``beam_search`` call only ``encode``, ``decode_step`` and
``reorder_state``: a new model family needs no change here, and a new decoding strategy is one
more function over those three. Scoring lives in ``length_penalty`` and ``_collect``; when a
source stops, in the ``done`` test of the beam loop; which tokens a step may write, in
``_decode_step`` (with ``Sentinels``: each sentinel of the source exactly once, no other).

Shapes in comments: B sources, k beam size, A sources still live (A <= B), V vocabulary,
t tokens decoded so far. Beam rows are laid out source-major: row ``a * k + j`` is beam j of
live source a.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from s2s.models import DecoderState, Seq2Seq
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["greedy_search", "beam_search", "Hypothesis", "Sentinels", "length_penalty"]


class Sentinels(NamedTuple):
    """The placeholder sentinels of a model's vocabularies (s2s.placeholders): ``source[i]`` and
    ``target[i]`` are the ids of the same sentinel, (n,) each, on the decoding device.

    Given to a search, every output holds each sentinel of its source exactly once and no other:
    a sentinel the source lacks or the prefix already holds is ruled out, and so is eos while
    one is still owed. A masked placeholder then always comes back, unless the output reaches
    its length limit first.
    """

    source: Tensor
    target: Tensor


@torch.inference_mode()
def greedy_search(
    model: Seq2Seq,
    src: Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    max_len_cap: int | None = None,
    min_len: int = 0,
    sentinels: Sentinels | None = None,
) -> list[list[int]]:
    """Most likely next token at every step, for a batch, until every row has ended.

    Args:
        model: any Seq2Seq, in eval mode.
        src: (B, S) source ids with eos, right-padded.
        max_len_a, max_len_b: at most ``a * source_length + b`` output tokens per row...
        max_len_cap: ...and never more than this (a Transformer's positions end somewhere).
        min_len: eos is not allowed before this many tokens (benchmarks force equal lengths).
        sentinels: with them, each output copies its source's sentinels exactly once.

    Returns:
        Token ids per row, without bos/eos.
    """
    batch = src.shape[0]
    limit = _limits(src, max_len_a, max_len_b, max_len_cap)  # (B,)
    owed = _owed(src, sentinels)  # (B, n)
    state = model.encode(src)
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=src.device)  # (B,)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)  # (B,)
    out = []
    # Rows that ended stay in the batch until all have: no state reordering, pad tokens out.
    for step in range(int(limit.max())):
        log_probs, state = _decode_step(
            model, prev, state, eos_allowed=step >= min_len, owed=owed, sentinels=sentinels
        )  # (B, V)
        prev = log_probs.argmax(dim=-1)  # (B,)
        prev = torch.where(finished, torch.full_like(prev, PAD_ID), prev)
        if owed is not None:
            owed = _paid(owed, prev, sentinels)
        out.append(prev)
        finished |= (prev == EOS_ID) | (step + 1 >= limit)
        if finished.all():
            break
    rows = torch.stack(out, dim=1).tolist()  # (B, steps)
    return [_until_eos(row) for row in rows]


def _decode_step(
    model: Seq2Seq,
    prev: Tensor,
    state: DecoderState,
    eos_allowed: bool,
    owed: Tensor | None = None,
    sentinels: Sentinels | None = None,
) -> tuple[Tensor, DecoderState]:
    """``model.decode_step`` with the tokens this step may not write ruled out: pad and bos (as
    Hugging Face's bad_words_ids does; a model imported from Marian, whose decoder starts from
    its pad token, gives both real probability), eos before ``min_len``, and with ``owed``
    ((rows, n) bool, the sentinels each row has still to write) every sentinel not owed, and
    eos while one is."""
    log_probs, state = model.decode_step(prev, state)  # (rows, V)
    # Two scalar indices: a list index would copy an index tensor to the device every step.
    log_probs[:, PAD_ID] = float("-inf")
    log_probs[:, BOS_ID] = float("-inf")
    if not eos_allowed:
        log_probs[:, EOS_ID] = float("-inf")
    if owed is not None:
        # (rows, n) gathered and written back: the sentinel columns only, no (rows, V) mask.
        log_probs[:, sentinels.target] = log_probs[:, sentinels.target].masked_fill(
            ~owed, float("-inf")
        )
        log_probs[:, EOS_ID].masked_fill_(owed.any(dim=1), float("-inf"))  # a view: in place
    return log_probs, state


def _owed(src: Tensor, sentinels: Sentinels | None) -> Tensor | None:
    """(B, n) bool: which sentinels each source holds, so its output owes them; None without
    sentinels."""
    if sentinels is None:
        return None
    return (src.unsqueeze(-1) == sentinels.source).any(dim=1)  # (B, S, n) -> (B, n)


def _paid(owed: Tensor, token: Tensor, sentinels: Sentinels) -> Tensor:
    """``owed`` (rows, n) less the sentinel each row has just written (``token``: (rows,))."""
    return owed & (token.unsqueeze(1) != sentinels.target)


def _limits(src: Tensor, a: float, b: int, cap: int | None) -> Tensor:
    """(B,) maximum output length of each row: a * source length + b, at most ``cap``."""
    # The source length counts its eos; every row gets at least one step.
    limit = ((src != PAD_ID).sum(1).float() * a + b).long().clamp(min=1)
    return limit.clamp(max=cap) if cap else limit


def _until_eos(row: list[int]) -> list[int]:
    """The ids of ``row`` before its first eos or pad (pad: the row had ended)."""
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
    min_len: int = 0,
    sentinels: Sentinels | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``nbest`` best hypotheses per source, best first.

    Every source keeps ``beam`` live prefixes. Each step takes the 2k best extensions of each
    source; those that emit eos and rank above the k-th live one join the source's finished
    list, scored ``log_prob / length_penalty`` (fairseq's rule); the k best others live on. A
    source is done when it has ``beam`` finished hypotheses or reaches ``max_len_a *
    source_length + max_len_b`` tokens; done sources leave the batch, so the decoder only runs
    on live rows. All of it is tensor work except collecting finished hypotheses.

    Args:
        model: any Seq2Seq in eval mode.
        src: (B, S) source ids with eos, right-padded.
        beam: prefixes kept per source (1 = greedy).
        alpha: length-penalty exponent.
        nbest: hypotheses returned per source (<= beam).
        max_len_cap: output length limit whatever the source length.
        min_len: eos is not allowed before this many tokens (benchmarks force equal lengths).
        sentinels: with them, each output copies its source's sentinels exactly once.

    Returns:
        Per source, up to ``nbest`` hypotheses sorted by score, best first.
    """
    batch, k, device = src.shape[0], beam, src.device
    limits = _limits(src, max_len_a, max_len_b, max_len_cap)  # (B,)
    # k rows per source, [0]*k + [1]*k + ...: a Transformer shares each source's memory among
    # its k rows rather than copying it (see its reorder_state).
    state = model.reorder_state(
        model.encode(src), torch.arange(batch, device=device).repeat_interleave(k)
    )  # (B*k, ...)
    owed = _owed(src, sentinels)  # (B, n) -> (A*k, n) below, the sentinels each row still owes
    if owed is not None:
        owed = owed.repeat_interleave(k, dim=0)
    # Only the first prefix of each source is live at step 0: the k start identical and would
    # otherwise fill the beam with k copies of each extension.
    scores = torch.full((batch, k), float("-inf"), device=device)  # (A, k), A = live sources
    scores[:, 0] = 0.0  # scores: summed log-probabilities of the live prefixes
    prefixes = torch.empty((batch * k, 0), dtype=torch.long, device=device)  # (A*k, t), no bos
    active = torch.arange(batch, device=device)  # source index of each live block of k rows
    n_finished = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)  # (A*k,)
    # Live blocks are renumbered 0..A-1 after each step, so blocks[:A] stays right.
    blocks = torch.arange(batch, device=device)[:, None] * k  # (B, 1) first row of each block
    for step in range(int(limits.max())):
        log_probs, state = _decode_step(
            model, prev, state, eos_allowed=step >= min_len, owed=owed, sentinels=sentinels
        )
        live, vocab = active.numel(), log_probs.shape[-1]
        # All k*V extensions of a source's prefixes compete: (A, k, 1) + (A, k, V) -> (A, k*V).
        candidates = (scores.unsqueeze(-1) + log_probs.view(live, k, vocab)).view(live, -1)
        # 2k: at most k candidates end in eos (one per prefix), so k others can always live on.
        top_scores, top_ids = candidates.topk(2 * k, dim=-1)  # (A, 2k), best first
        origin = blocks[:live] + top_ids // vocab  # (A, 2k) row the candidate extends
        token = top_ids % vocab  # (A, 2k)
        at_limit = (step + 1 >= limits[active]).unsqueeze(1)  # (A, 1)
        # -inf candidates (from step 0's empty beams, or eos before min_len) never count.
        ends = ((token == EOS_ID) | at_limit) & (top_scores > float("-inf"))
        # Ending candidates count while fewer than k live ones rank above them (at the limit,
        # where all end: the k best).
        live_before = (~ends).cumsum(dim=1) - (~ends).long()  # (A, 2k) live ones ranked above
        take = ends & (live_before < k)
        take[:, k:] &= ~at_limit
        if take.any():
            _collect(finished, take, active, origin, token, top_scores, prefixes, alpha)
            n_finished[active] += take.sum(dim=1)
        # The k best candidates that did not end live on (-inf where fewer than k did not).
        live_scores, live_pos = top_scores.masked_fill(ends, float("-inf")).topk(k, dim=-1)
        # A source stops with k finished hypotheses (fairseq's rule), at its length limit, or
        # when no live prefix is left.
        done = (
            (n_finished[active] >= k) | at_limit.squeeze(1) | (live_scores[:, 0] == float("-inf"))
        )
        keep = ~done  # (A,)
        if not keep.any():
            break
        # One index both reorders the beams of each source and drops the sources that are done.
        rows = origin.gather(1, live_pos)[keep].view(-1)  # (A'*k,)
        prev = token.gather(1, live_pos)[keep].view(-1)  # (A'*k,) the next step's input
        state = model.reorder_state(state, rows)
        prefixes = torch.cat([prefixes[rows], prev.unsqueeze(1)], dim=1)  # (A'*k, t + 1)
        if owed is not None:
            owed = _paid(owed[rows], prev, sentinels)  # (A'*k, n)
        scores, active = live_scores[keep], active[keep]  # (A', k), (A',)
    return [sorted(f, key=lambda h: -h.score)[:nbest] for f in finished]


def _collect(finished, take, active, origin, token, top_scores, prefixes, alpha) -> None:
    """Append the hypotheses that end at this step to their sources' finished lists.

    Args:
        take: (A, 2k) bool, the candidates that end here and count.
        active: (A,) source index of each live block.
        origin, token, top_scores: (A, 2k) row extended, token added, summed log-probability.
        prefixes: (A*k, t) tokens of every live row.
    """
    where = take.nonzero(as_tuple=True)  # (live block, candidate rank) pairs
    sources = active[where[0]].tolist()
    rows = prefixes[origin[where]].tolist()  # the prefix each hypothesis extends
    for source, row, last, score in zip(
        sources, rows, token[where].tolist(), top_scores[where].tolist()
    ):
        # Eos is not output; a hypothesis cut at the length limit keeps its last token.
        tokens = row if last == EOS_ID else row + [last]
        # Length + 1 for the eos, whose log-probability ``score`` holds (limit-cut ones too).
        finished[source].append(
            Hypothesis(tokens, score / length_penalty(len(tokens) + 1, alpha), score)
        )
