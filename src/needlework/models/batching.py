"""Batches sized to the GPU: the one loop every batched pass over examples uses (generation,
log-probabilities, head scores, head means).

`batch_size: auto` starts at `AUTO_START` examples on a GPU and halves whenever a batch runs out
of memory, retrying that batch; finished batches are kept, and the size that fit is kept for the
rest. Off the GPU, `auto` is `CPU_BATCH`. Results do not depend on the batch size beyond the
order of floating-point sums (tests compare batched with one-at-a-time runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from needlework.schema import AUTO

__all__ = ["AUTO_START", "CPU_BATCH", "for_batches", "is_oom", "start_size"]

AUTO_START = 64
CPU_BATCH = 4

log = logging.getLogger(__name__)


def is_oom(e: BaseException) -> bool:
    """A CUDA out-of-memory error, also as cuBLAS/cuDNN report it when a handle cannot be allocated
    (a process held to a share of the GPU's memory hits that first)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    signs = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "out of memory")
    return isinstance(e, RuntimeError) and any(s in str(e) for s in signs)


def start_size(batch_size: int | str, device) -> int:
    """The first batch size to try: the given one, or for `auto` AUTO_START on a GPU, else CPU_BATCH."""
    if batch_size != AUTO:
        return max(1, int(batch_size))
    return AUTO_START if torch.device(device).type == "cuda" else CPU_BATCH


def for_batches(order: Sequence[int], batch_size: int | str, fn: Callable[[list[int]], None], device, bar=None) -> int:
    """Call `fn(indices)` on consecutive slices of `order`; returns the last batch size used.

    With `auto`, a CUDA out-of-memory error inside `fn` halves the size and retries the same
    examples (`fn` must have no effect before it returns). A fixed size never retries.
    """
    auto = batch_size == AUTO
    bs, i = start_size(batch_size, device), 0
    while i < len(order):
        idx = list(order[i : i + bs])
        try:
            fn(idx)
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
            if not (auto and is_oom(e)) or bs == 1:
                raise
            torch.cuda.empty_cache()
            bs //= 2
            log.info("out of GPU memory: %d examples per batch from now on", bs)
            continue
        i += len(idx)
        if bar is not None:
            bar.update(len(idx))
    return bs
