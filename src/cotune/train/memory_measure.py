"""Measuring the tensor-memory peak of a step on the CPU, where ``torch.cuda.max_memory_allocated``
does not exist, to check the memory plan against.

PyTorch's CPU allocator reports every allocation and free to the profiler when it runs with
``profile_memory=True``, together with the running total of the bytes allocated since profiling
began (``total_allocated``). The largest total seen during a step is the step's peak on top of what
existed before it; adding the bytes of the tensors that live across steps (weights, optimizer
states) gives the peak of live tensor memory, the quantity ``max_memory_allocated`` reports on a
GPU. It sees allocations inside kernels (which a ``TorchDispatchMode`` does not) and nothing of the
Python heap or the allocator's slack (which ``ru_maxrss`` mixes in). A tensor allocated before the
profiled call and freed during it is not subtracted, so the peak can only err upwards, by at most
such tensors' bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def live_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared weights count once)."""
    storages: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of an optimizer's state (AdamW: the moments and step counters)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def profiled_peak(fn: Callable[[], object]) -> int:
    """Runs ``fn`` under the profiler and returns the most bytes it had allocated at once (net of
    its own frees), on the CPU."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.total_allocated, event.extra_fields.alloc_size))
        stack.extend(event.children)
    if not events:
        return 0
    events.sort()
    # The running total is process-wide: blocks allocated under an earlier profiler and freed
    # after it stopped are never subtracted, so count from the total just before the first event.
    _time, first_total, first_size = events[0]
    return max(total for _t, total, _s in events) - (first_total - first_size)


def measured_step_peak(step: Callable[[], object], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Peak live tensor bytes of one call of ``step`` (a whole training step): the model's
    parameters and buffers and the optimizer's state before it, plus the step's profiled peak.
    Run one step before (so the optimizer state exists, as in every later step)."""
    persistent = [*model.parameters(), *model.buffers(), *optimizer_tensors(optimizer)]
    return live_bytes(persistent) + profiled_peak(step)
