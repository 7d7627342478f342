"""Token-budget batches from a stream of (source ids, target ids) examples.

Batches are cut by a budget of padded token positions (``max_tokens``), not by a number of
sentences, after sorting a shuffle buffer by length: neighbours have similar lengths, so little of
each batch is padding, and the budget keeps the compute per batch roughly constant.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["Example", "token_batches", "collate", "to_device", "prefetch"]

Example = tuple[Sequence[int], Sequence[int]]  # (source ids, target ids), no bos/eos
T = TypeVar("T")
U = TypeVar("U")


def _cost(example: Example) -> int:
    # +1: eos on the source, bos/eos on the target; the longer side sets the padded width.
    return max(len(example[0]), len(example[1])) + 1


def token_batches(
    examples: Iterable[Example],
    max_tokens: int,
    buffer_size: int = 10_000,
    seed: int = 0,
) -> Iterator[list[Example]]:
    """Group a stream of examples into length-bucketed batches of at most ``max_tokens``.

    Args:
        examples: the stream (its order is kept within a buffer only as far as sorting allows).
        max_tokens: budget of padded positions per batch: ``len(batch) * longest <= max_tokens``.
            A single example longer than the budget becomes a batch of its own.
        buffer_size: examples sorted together; larger means less padding but later batches.
        seed: shuffles the batches of each buffer, so consecutive steps see different lengths.

    Yields:
        Lists of examples.
    """
    rng = random.Random(seed)
    buffer: list[Example] = []
    for example in examples:
        buffer.append(example)
        if len(buffer) >= buffer_size:
            yield from _cut(buffer, max_tokens, rng)
            buffer = []
    if buffer:
        yield from _cut(buffer, max_tokens, rng)


def _cut(buffer: list[Example], max_tokens: int, rng: random.Random) -> list[list[Example]]:
    buffer.sort(key=_cost)
    batches, batch, longest = [], [], 0
    for example in buffer:
        width = max(longest, _cost(example))  # the batch's padded width if this one joins
        # Close the batch when adding this example would take it over the budget.
        if batch and width * (len(batch) + 1) > max_tokens:
            batches.append(batch)
            batch, width = [], _cost(example)
        batch.append(example)
        longest = width
    if batch:
        batches.append(batch)
    # Unshuffled, a buffer's batches would run from the shortest sentences to the longest.
    rng.shuffle(batches)
    return batches


def collate(batch: list[Example]) -> dict[str, torch.Tensor]:
    """Pad a batch into tensors: ``src`` (B, S) ends with eos; ``tgt_in`` (B, T) starts with bos;
    ``tgt_out`` (B, T) is ``tgt_in`` shifted left, ending with eos; pad id 0 everywhere else."""
    size = len(batch)
    # + 1 column: the eos after the longest source, the bos/eos around the longest target.
    src = np.full((size, max(len(s) for s, _ in batch) + 1), PAD_ID, np.int64)
    tgt_in = np.full((size, max(len(t) for _, t in batch) + 1), PAD_ID, np.int64)
    tgt_out = tgt_in.copy()
    for i, (s, t) in enumerate(batch):
        src[i, : len(s)] = s
        src[i, len(s)] = EOS_ID
        tgt_in[i, 0] = BOS_ID
        tgt_in[i, 1 : len(t) + 1] = t
        tgt_out[i, : len(t)] = t
        tgt_out[i, len(t)] = EOS_ID
    return {
        "src": torch.from_numpy(src),
        "tgt_in": torch.from_numpy(tgt_in),
        "tgt_out": torch.from_numpy(tgt_out),
    }


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch on ``device``. To a GPU through pinned memory and without blocking: the
    host goes on to queue kernels and build the next batch while the copy runs (a copy from
    ordinary pageable memory would wait for the device to finish what it was doing first)."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in tensors.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in tensors.items()}


def prefetch(items: Iterable[T], prepare: Callable[[T], U], ahead: bool) -> Iterator[tuple[T, U]]:
    """``(item, prepare(item))`` for each item. With ``ahead``, the next item is prepared in a
    background thread while the caller works on the current one (a GPU step leaves the host
    idle, waiting on the device; on a CPU the cores are busy, so preparing inline is as fast)."""
    if not ahead:
        for item in items:
            yield item, prepare(item)
        return
    iterator = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="s2s-prefetch") as pool:
        pending = [(item, pool.submit(prepare, item)) for item in _first(iterator)]
        while pending:
            item, future = pending.pop()
            # Submit the next item before waiting on this one: it is prepared while the caller
            # works on this one.
            pending = [(nxt, pool.submit(prepare, nxt)) for nxt in _first(iterator)]
            yield item, future.result()


def _first(iterator: Iterator[T]) -> list[T]:
    """The next item of ``iterator`` in a list, or an empty list at its end."""
    for item in iterator:
        return [item]
    return []
