"""Out-of-memory back-off, in one place: halve the batch and try again.

What counts as out of memory is accelerate's :func:`accelerate.utils.memory.should_reduce_batch_size`:
a ``RuntimeError`` (``torch.OutOfMemoryError`` is one) saying `` out of memory.`` (CUDA, HIP, XPU),
``MPS backend out of memory``, or ``DefaultCPUAllocator: can't allocate memory`` (torch's CPU
allocator). Python's own ``MemoryError`` is not retried: it comes from Python or numpy objects, which
a smaller batch of the model does not shrink.

:func:`halving` runs a whole job (generation, task evaluation, fine-tuning), halving the batch on
out of memory and, at one example per batch, re-raising the error (or raising ``at_one``). It is a
plain loop rather than accelerate's :func:`~accelerate.utils.find_executable_batch_size`, because that
runs ``gc.collect()`` before every call, out of memory or not: measured at 0.375 s against 2.26 s for
a whole 32-coalition scorer call of smollm2-135m on one CPU thread (``benchmarks/bench_finetune.py``,
``benchmarks/FINETUNE.md``), and 0.4–1 s per generation or format check in a process that holds many
objects (the test session: 190 s → 115 s for three pipeline test modules). Here the collection and
accelerate's device-cache clearing run only after an out-of-memory error, when they free the failed
batch's memory; the scorer (:class:`shapshift.scoring.TeacherForcedScorer`) keeps its own loop with
:func:`is_oom` around each micro-batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

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
    def run() -> T:
        size = batch_size
        while True:
            try:
                return function(size)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                clear_device_cache(garbage_collection=True)  # the failed batch's tensors, before a smaller one
                if size <= 1:
                    if at_one is not None:
                        raise at_one from exc
                    raise
                size = smaller(size, divides)
                log.warning("out of memory in %s; retrying with batch size %d", what, size)

    return run
