"""Batch sizes sized to the GPU: `auto` halves on out-of-memory and retries the same examples;
fixed sizes never retry; config values are checked."""

import pytest
import torch

from needlework.errors import NeedleworkError
from needlework.models.batching import AUTO_START, CPU_BATCH, for_batches, start_size
from needlework.schema import int_or_auto


def _run(batch_size, device, fits: int):
    seen, calls = [], []

    def fn(idx):
        calls.append(len(idx))
        if len(idx) > fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        seen.extend(idx)

    last = for_batches(list(range(100)), batch_size, fn, device)
    return seen, calls, last


def test_auto_halves_on_oom_and_keeps_every_example_once_in_order():
    seen, calls, last = _run("auto", "cuda", fits=5)
    assert seen == list(range(100))  # each example exactly once, in order: failed batches left no trace
    assert calls[:5] == [AUTO_START, 32, 16, 8, 4] and set(calls[5:]) == {4} and last == 4


def test_fixed_sizes_never_retry_and_auto_off_the_gpu_is_the_cpu_size():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _run(8, "cuda", fits=5)
    seen, calls, _ = _run(7, "cpu", fits=100)
    assert seen == list(range(100)) and calls == [7] * 14 + [2]
    assert start_size("auto", "cpu") == CPU_BATCH and start_size("auto", torch.device("cuda", 0)) == AUTO_START
    with pytest.raises(torch.cuda.OutOfMemoryError):  # even auto gives up at one example
        _run("auto", "cuda", fits=0)


@pytest.mark.parametrize("bad", [0, -1, "many", 2.5, True])
def test_int_or_auto_refuses_other_values(bad):
    with pytest.raises(NeedleworkError, match="batch_size must be auto or an integer >= 1"):
        int_or_auto(bad, "batch_size")
    assert int_or_auto("12", "batch_size") == 12 and int_or_auto("auto", "x") == "auto" and int_or_auto(0, "r", least=0) == 0
