"""Telling an out-of-memory failure from any other: the trial process and the memory probe both need to."""

from __future__ import annotations


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text
        or "DefaultCPUAllocator: can't allocate memory" in text  # the host's RAM, on the CPU
    )
