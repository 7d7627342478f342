"""What the compute device offers: native bf16, TF32 matmuls, pinned host memory.

Ray-free and model-free: training, the translator and the benchmarks ask here, so that
``precision=auto`` means the same thing everywhere.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "native_bf16", "resolve_precision", "autocast", "enable_tf32", "shape_stable_attention",
    "memory_fraction", "cap_memory",
]  # fmt: skip


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware. Emulated bf16 (a CUDA GPU older than
    Ampere, a CPU without AVX512-BF16 or AMX) is slower than fp32, so it does not count."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":  # private but long-standing helpers; absent ones count as "no"
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool = True) -> str:
    """``fp32`` or ``bf16`` for a setting of ``fp32``, ``bf16`` or ``auto``.

    ``auto`` is bf16 where the device computes it natively (see :func:`native_bf16`), else fp32;
    with ``cpu_bf16=False`` a CPU always gets fp32 (decoding: bf16 is not measured faster there).
    """
    if precision != "auto":
        return precision
    if device.type == "cpu" and not cpu_bf16:
        return "fp32"
    return "bf16" if native_bf16(device) else "fp32"


def autocast(precision: str, device: torch.device):
    """The context that computes in ``precision`` (a resolved one) on ``device``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def enable_tf32(device: torch.device) -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (Ampere and newer): about 8x the fp32
    rate at a 10-bit mantissa, which training and decoding tolerate. No effect on a CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def shape_stable_attention(device: torch.device) -> None:
    """Keep ``scaled_dot_product_attention`` off cuDNN's attention backend on CUDA.

    PyTorch prefers cuDNN attention for bf16 on Hopper GPUs, and cuDNN builds an execution graph
    for every new shape (hundreds of milliseconds each). s2s's shapes change all the time (token
    budgets give batches of other lengths every step; a decoder's cache grows every step), so
    that cost is paid at nearly every call: measured on an H200, bf16 training ran at 5% of
    TF32's speed with it. The flash and memory-efficient kernels serve any shape as is. No
    effect on a CPU."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


# A process's share of a GPU that its caching allocator may fill: the rest of the share is for
# what the allocator does not count (the CUDA context, cuBLAS and cuDNN workspaces, ~0.5-1 GiB).
SHARED_GPU_HEADROOM = 0.95


def memory_fraction(gpus: float) -> float | None:
    """The fraction of a GPU's memory a process granted ``gpus`` of it (Ray's ``num_gpus``) may
    allocate, or None for a whole GPU (no cap). Two processes at 0.5 get 0.475 each, so together
    they stay below the device's memory and neither can take the other's share."""
    return None if gpus >= 1 else gpus * SHARED_GPU_HEADROOM


def cap_memory(gpus: float, device: torch.device) -> float | None:
    """Cap this process's CUDA caching allocator at its share of ``device`` (see
    :func:`memory_fraction`); an allocation past it raises ``torch.cuda.OutOfMemoryError`` here
    instead of starving a neighbour. Call before loading the model. The fraction set, or None
    (a whole GPU, a CPU). CTranslate2 allocates outside torch: nothing caps it."""
    fraction = memory_fraction(gpus)
    if device.type != "cuda" or fraction is None:
        return None
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
