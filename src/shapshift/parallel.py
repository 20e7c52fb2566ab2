"""Several processes on one run (``accelerate launch``): who does what, and where they wait for each other.

Launched by ``accelerate launch --num_processes N -m shapshift run …`` (or torchrun, or SLURM through
accelerate), every process runs the same stages on the same config. The explain and adapt stages
split the examples still to explain between the processes (:func:`share`); each process saves its
examples as per-example checkpoints, and the main process alone writes the run folder's artifacts
and manifest (:attr:`shapshift.store.RunStore.writer`) after every process has finished
(:func:`wait`). Anything whose value must be the same in every process (the generations) is
computed once on the main process and sent to the others (:func:`from_main`).

A plain ``shapshift run`` (or a notebook) is one process: every function here then does the
single-process thing, and accelerate is not even imported.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a process waits for the others at a barrier (the main process may fine-tune meanwhile).
BARRIER_TIMEOUT = timedelta(hours=48)
_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
#: What a launcher tells a process about the others (hidden by :func:`alone`).
_LAUNCH_VARIABLES = (*_SIZE_VARIABLES, "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "PMI_RANK",
                     "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_RANK")


def launched() -> bool:
    """Whether this process is one of several started together (a launcher set ``WORLD_SIZE`` > 1)."""
    return any(int(os.environ.get(v, "1") or 1) > 1 for v in _SIZE_VARIABLES)


@functools.cache
def _state() -> Any:
    """accelerate's :class:`PartialState` (it joins the process group), or None in a single process."""
    if not launched():
        return None
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)


def num_processes() -> int:
    """How many processes share the run (1 without a launcher)."""
    state = _state()
    return 1 if state is None else int(state.num_processes)


def index() -> int:
    """This process's rank, 0 … :func:`num_processes` − 1 (0 is the main process)."""
    state = _state()
    return 0 if state is None else int(state.process_index)


def is_main() -> bool:
    """Whether this process writes the run folder (the only one, or rank 0 of several)."""
    return index() == 0


def device() -> str | None:
    """This process's own device under a launcher (``cuda:<local rank>`` or ``cpu``); None in a single process.

    A CPU is named ``cpu``, as a single process names it: accelerate's ``cpu:0`` takes other kernels in
    places, and a log-probability then differs from the single-process one in the 7th digit.
    """
    state = _state()
    if state is None:
        return None
    return "cpu" if state.device.type == "cpu" else str(state.device)


def wait() -> None:
    """Barrier: return once every process got here (nothing to wait for in a single process)."""
    state = _state()
    if state is not None and state.num_processes > 1:
        state.wait_for_everyone()


def share(items: Sequence[T]) -> list[T]:
    """This process's part of ``items``: contiguous, in order, sizes differing by at most one
    (accelerate's ``split_between_processes``); all of them in a single process."""
    state = _state()
    if state is None or state.num_processes == 1:
        return list(items)
    with state.split_between_processes(list(items)) as mine:
        return list(mine)


def from_main(compute: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``compute(*args, **kwargs)`` run on the main process only, its result (picklable) sent to every process."""
    state = _state()
    if state is None or state.num_processes == 1:
        return compute(*args, **kwargs)
    from accelerate.utils import broadcast_object_list

    box = [compute(*args, **kwargs) if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Run the block as a single process would, while the other processes wait at a barrier.

    For work that one process does for all (the main process fine-tunes): ``transformers.Trainer``
    would otherwise see the launched processes, wrap the model for data-parallel training and wait for
    the others to join each step. accelerate's shared state and the launcher's variables are set
    aside for the block and restored after it; nothing in the block may talk to the other processes.
    """
    state = _state()
    if state is None or state.num_processes == 1:
        yield
        return
    from accelerate.state import AcceleratorState, GradientState, PartialState

    kept = {cls: dict(cls._shared_state) for cls in (PartialState, AcceleratorState, GradientState)}
    env = {k: os.environ.pop(k) for k in _LAUNCH_VARIABLES if k in os.environ}
    for cls in kept:
        cls._shared_state.clear()
    try:
        yield
    finally:
        for cls, shared in kept.items():  # the same dict objects: existing instances see the old state again
            cls._shared_state.clear()
            cls._shared_state.update(shared)
        os.environ.update(env)
