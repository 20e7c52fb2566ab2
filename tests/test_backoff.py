"""The out-of-memory back-off: halving on out of memory only, and no forced garbage collection otherwise."""

import gc

import pytest

from shapshift.backoff import halving, smaller


def test_halving_retries_smaller_batches_on_out_of_memory_only(monkeypatch):
    collected = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    sizes = []

    def job(size):
        sizes.append(size)
        if size > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return size

    assert halving(job, 16, "a job")() == 2 and sizes == [16, 8, 4, 2]
    assert len(collected) == 3  # after each out-of-memory error, never before a call that fits
    collected.clear()
    assert halving(lambda size: size, 16, "a job")() == 16 and not collected
    assert halving(job, 12, "a job", divides=12)() == 3  # 12 -> 6 -> 3: micro-batches that divide 12
    assert smaller(12, 12) == 6 and smaller(5) == 2


def test_halving_reraises_at_one_and_other_errors_at_once():
    def oom(size):
        raise RuntimeError("CUDA out of memory.")

    with pytest.raises(RuntimeError, match="out of memory"):
        halving(oom, 4, "a job")()
    with pytest.raises(ValueError, match="too long"):
        halving(oom, 4, "a job", at_one=ValueError("too long"))()
    calls = []

    def broken(size):
        calls.append(size)
        raise KeyError("not memory")

    with pytest.raises(KeyError):
        halving(broken, 8, "a job")()
    assert calls == [8]
