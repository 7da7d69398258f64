"""Process-wide floating-point modes, set for a block and restored after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["denormals_flushed", "flush_denormal_enabled"]


def flush_denormal_enabled() -> bool:
    """Whether the CPU currently flushes denormal floats to zero.

    torch has a setter (`torch.set_flush_denormal`) but no getter, so this asks the CPU: with
    flushing on, a denormal float32 input reads as zero.

    Examples:
        >>> with denormals_flushed():  # on x86 with SSE3 and on AArch64
        ...     inside = flush_denormal_enabled()
        >>> inside
        True
    """
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # below float32's smallest normal 1.2e-38
    return bool((tiny * 1.0).item() == 0.0)


@contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Flush denormal floats to zero on the CPU inside the block, then restore the previous mode.

    Small models trained from scratch on CPU drift into denormal weights and activations, which
    x86 CPUs process an order of magnitude slower; flushing them changes results only below
    float32's smallest normal number (1.2e-38). The mode is process-wide (every thread), so it
    is restored on exit, also after an exception. Where the CPU has no such mode
    (`torch.set_flush_denormal` returns False) the block runs unchanged.

    Args:
        enabled: Flush inside the block; False makes the block a no-op, so callers can pass a
            config flag.

    Examples:
        >>> before = flush_denormal_enabled()
        >>> with denormals_flushed():
        ...     pass
        >>> flush_denormal_enabled() == before
        True
    """
    if not enabled:
        yield
        return
    before = flush_denormal_enabled()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
