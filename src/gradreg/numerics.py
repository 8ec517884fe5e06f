"""Subnormal (denormal) floats on CPU: flushing them to zero during training and evaluation.

As a network trains, some of its activations and gradients become subnormal floats (below about
1.2e-38 in float32). CPUs that handle those in microcode compute them tens of times slower than normal
floats, and there the late steps of a LeNet-5 run were measured several times slower than its early
ones; on this project's AMD machine subnormals cost about 2.8x and runs were not slowed
(``benchmarks/README.md``). Flushing (the CPU's flush-to-zero and denormals-are-zero modes, set by
:func:`torch.set_flush_denormal`) reads and writes them as zero instead, costing nothing either way. The
paired comparison in ``results/REPRODUCTION.md`` (Appendix C) shows it does not move results beyond
last-digit differences.

The mode belongs to a CPU thread. Threads created after it is set (torch's intra-op pool, the first
time a parallel kernel runs) inherit it; a pool that already exists keeps its threads' own mode.
:func:`subnormals_flushed` therefore measures rather than trusts: it runs a parallel kernel on
subnormal inputs and looks at the result. CUDA kernels are not affected either way.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch

__all__ = ["flush_denormal", "subnormals_flushed", "default_flush_denormal", "set_default_flush_denormal",
           "FLUSH_DENORMAL_ENV"]

# The process-wide default, inherited by a sweep's worker processes (spawned or ray): "0" turns it off.
FLUSH_DENORMAL_ENV = "GRADREG_FLUSH_DENORMAL"

# Large enough that torch splits the multiply over its intra-op threads (grain size 32,768).
_PROBE_SIZE = 1 << 17


def default_flush_denormal() -> bool:
    """Flushing on unless the environment variable ``GRADREG_FLUSH_DENORMAL`` says ``0``/``false``/``no``."""
    value = os.environ.get(FLUSH_DENORMAL_ENV, "1").strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{FLUSH_DENORMAL_ENV} must be 1 or 0 (true/false, yes/no, on/off), got {value!r}")


def subnormals_flushed() -> bool:
    """Whether CPU float32 arithmetic in this thread and torch's intra-op threads flushes subnormals,
    measured: a subnormal input multiplied by one gives zero only where it is flushed."""
    tiny = torch.full((_PROBE_SIZE,), 1e-39, dtype=torch.float64).to(torch.float32)  # conversion in float64
    return not bool((tiny * 1.0).any())


@contextlib.contextmanager
def flush_denormal(enabled: bool | None = None) -> Iterator[bool]:
    """Flush subnormal floats to zero on CPU inside the block (``enabled=False``: compute them in full);
    yields whether they are flushed.

    ``enabled=None`` takes :func:`default_flush_denormal`. On leaving, the mode found on entry is
    restored (measured with :func:`subnormals_flushed`, since torch has no getter). On CPUs without the
    mode (not x86 with SSE3) it changes nothing and yields ``False``.
    """
    if enabled is None:
        enabled = default_flush_denormal()
    before = subnormals_flushed()
    changed = before != enabled and torch.set_flush_denormal(enabled)
    now = subnormals_flushed() if changed else before
    if changed and now != enabled:
        warnings.warn(f"subnormal flushing {'on' if enabled else 'off'} reaches only this thread: torch's "
                      f"{torch.get_num_threads()} intra-op threads were started before. Call "
                      "gradreg.numerics.set_default_flush_denormal() at the start of the program (the "
                      "gradreg command does), or use one thread.", RuntimeWarning, stacklevel=3)
    try:
        yield now
    finally:
        if changed:
            torch.set_flush_denormal(before)


def set_default_flush_denormal(enabled: bool | None = None) -> bool:
    """Make ``enabled`` (None: :func:`default_flush_denormal`) this process's flushing mode and default,
    and the default of the processes it starts (sweep workers inherit the environment). Called before
    torch starts its intra-op threads, it reaches them too (they inherit the mode). Returns whether the
    CPU supports the mode."""
    if enabled is None:
        enabled = default_flush_denormal()
    os.environ[FLUSH_DENORMAL_ENV] = "1" if enabled else "0"
    return torch.set_flush_denormal(enabled)
