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
    logits = logits.flatten(0, 1).float()  # (N, V)
    target = target.flatten()  # (N,)
    # F.cross_entropy is one fused kernel (log-softmax, smoothing, ignore_index), forward and
    # backward: no (N, V) copies for masking, which cost more than the softmax itself on CPU.
    loss = F.cross_entropy(
        logits, target, ignore_index=PAD_ID, label_smoothing=smoothing, reduction="sum"
    )
    if smoothing:
        # The plain NLL is only reported: no graph for it.
        with torch.no_grad():
            nll = F.cross_entropy(logits, target, ignore_index=PAD_ID, reduction="sum")
    else:
        nll = loss.detach()
    return loss, nll, (target != PAD_ID).sum()


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
