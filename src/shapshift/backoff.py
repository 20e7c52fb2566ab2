"""Out-of-memory back-off, in one place: halve the batch and try again.

What counts as out of memory is accelerate's :func:`accelerate.utils.memory.should_reduce_batch_size`:
a ``RuntimeError`` (``torch.OutOfMemoryError`` is one) saying `` out of memory.`` (CUDA, HIP, XPU),
``MPS backend out of memory``, or ``DefaultCPUAllocator: can't allocate memory`` (torch's CPU
allocator). Python's own ``MemoryError`` is not retried: it comes from Python or numpy objects, which
a smaller batch of the model does not shrink.

:func:`halving` runs a whole job (generation, task evaluation, fine-tuning) under accelerate's
:func:`~accelerate.utils.find_executable_batch_size`, which halves here instead of its default ×0.9
and, at one example per batch, re-raises the error (or raises ``at_one``).

The scorer (:class:`shapshift.scoring.TeacherForcedScorer`) is called many times per example, so it
keeps a plain loop with :func:`is_oom`: ``find_executable_batch_size`` runs ``gc.collect()`` on every
call, measured at 0.375 s against 2.26 s for a whole 32-coalition scorer call of smollm2-135m on one
CPU thread (``benchmarks/bench_finetune.py``, ``benchmarks/FINETUNE.md``): 17 % more per call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from accelerate.utils import find_executable_batch_size
from accelerate.utils.memory import should_reduce_batch_size

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error that a smaller batch may avoid (see the module docstring)."""
    return isinstance(exc, Exception) and should_reduce_batch_size(exc)


def smaller(batch_size: int, divides: int | None = None) -> int:
    """The next batch size to try after ``batch_size`` ran out of memory: half of it, rounded down (≥ 1).

    With ``divides``, the largest divisor of ``divides`` that is at most half of ``batch_size``, so
    micro-batches of that size still add up to a batch of ``divides`` exactly.
    """
    half = max(1, batch_size // 2)
    if divides is None:
        return half
    return max(d for d in range(1, half + 1) if divides % d == 0)


def halving(function: Callable[[int], T], batch_size: int, what: str, *, divides: int | None = None,
            at_one: Exception | None = None) -> Callable[[], T]:
    """``function(batch_size)`` retried with a smaller batch (:func:`smaller`) while it runs out of memory.

    ``function`` gets the batch size as its only argument and may be called again after a failure
    part way (keep finished work outside it to resume). Out of memory at batch size 1 re-raises the
    error, or raises ``at_one`` from it. ``what`` names the job in the log's warning.
    """
    size = batch_size

    def reduce() -> int:  # called inside accelerate's `except` block: a bare raise re-raises the OOM
        nonlocal size
        if size <= 1:
            if at_one is not None:
                raise at_one
            raise  # noqa: PLE0704 - re-raises the out-of-memory error being handled
        size = smaller(size, divides)
        log.warning("out of memory in %s; retrying with batch size %d", what, size)
        return size

    return find_executable_batch_size(function, starting_batch_size=batch_size, reduce_batch_size_fn=reduce)
