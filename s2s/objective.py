"""What training minimises and how: label-smoothed cross-entropy, AdamW, learning-rate schedules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.tokenizer import PAD_ID

__all__ = ["label_smoothed_loss", "build_optimizer", "lr_multiplier"]


def label_smoothed_loss(
    logits: Tensor, target: Tensor, smoothing: float
) -> tuple[Tensor, Tensor, int]:
    """Summed label-smoothed cross-entropy over non-pad target positions.

    Sums, not means: the trainer divides by the target tokens of *all* workers and accumulation
    steps, so every token weighs the same whatever the batch it fell in.

    Args:
        logits: (B, T, V).
        target: (B, T) ids, pad 0 ignored.
        smoothing: mass spread uniformly over the vocabulary (0.1 is the usual value).

    Returns:
        (loss_sum, nll_sum, n_tokens): the smoothed loss to backpropagate, the plain negative
        log-likelihood (for perplexity) and the number of target tokens, all 0-d tensors on the
        logits' device: reading none of them waits for the device (a GPU runs ahead until the
        caller asks for a number, at a log line).
    """
    target = target.flatten()  # (N,)
    keep = target != PAD_ID  # (N,)
    # One log-softmax (N, V), in fp32 whatever the logits' precision (the cast happens inside
    # the kernel: no fp32 copy of the logits), serves both the smoothed loss and the reported
    # NLL. F.cross_entropy with label smoothing computes the same log-softmax internally, and a
    # second call for the NLL would compute it again: on a CPU each pass over (N, V) costs about
    # as much as a decoder layer's matmuls.
    logprobs = F.log_softmax(logits.flatten(0, 1), dim=-1, dtype=torch.float32)  # (N, V)
    nll = F.nll_loss(logprobs, target, ignore_index=PAD_ID, reduction="sum")
    if smoothing:
        # Cross-entropy against (1 - s) * one-hot + s / V: the uniform part is the mean
        # negative log-probability over the vocabulary (what F.cross_entropy's smoothing adds).
        uniform = -(logprobs.sum(-1) * keep).sum() / logprobs.shape[-1]
        loss = (1 - smoothing) * nll + smoothing * uniform
        nll = nll.detach()  # the plain NLL is only reported
    else:
        loss, nll = nll, nll.detach()
    return loss, nll, keep.sum()


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.98)
) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and embeddings (1-d tensors and the embedding).

    On CUDA the fused kernel: one launch updates every parameter, where the default runs a few
    kernels per tensor group. Build it after the model is on its device.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "embed" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = all(p.is_cuda for p in model.parameters())
    # betas (0.9, 0.98) and eps 1e-9 as in Vaswani et al.; fused=None (not False) leaves the
    # choice of implementation to PyTorch off CUDA.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-9, fused=fused or None)


def lr_multiplier(
    step: int, warmup: int, schedule: str = "inverse_sqrt", progress: float = 0.0
) -> float:
    """Factor on the peak learning rate at ``step`` (1-based), ``progress`` of the way through.

    Every schedule warms up linearly to 1 over ``warmup`` steps. ``inverse_sqrt`` then decays as
    ``sqrt(warmup / step)`` (Vaswani et al. with the peak made explicit) and never reaches 0.
    ``cosine`` and ``linear`` decay to 0 at ``progress`` 1, the end of training (by steps, or by
    wall-clock for a time budget): for a short, fixed budget they beat ``inverse_sqrt``, which
    still trains at a high rate when the budget runs out.
    """
    step = max(step, 1)
    ramp = step / max(warmup, 1) if step <= warmup else 1.0  # linear warmup; max(): warmup 0
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return min(ramp, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if schedule == "linear":
        return min(ramp, 1.0 - progress)
    return ramp if step <= warmup else math.sqrt(warmup / step)
