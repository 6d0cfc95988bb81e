"""Measurement helpers shared by `python -m rga_ops.check` and benchmarks/."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def saved_tensor_bytes(fn: Callable[[], object]) -> tuple[object, int]:
    """Runs fn() and returns (its result, bytes of the distinct storages that autograd
    keeps for backward), captured with torch.autograd.graph.saved_tensors_hooks."""
    storages: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[(str(t.device), s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(storages.values())


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs, synchronised on GPUs."""
    return interleaved_median_seconds({"fn": fn}, device, warmup, repeats)["fn"]


def interleaved_median_seconds(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 2,
                               repeats: int = 5) -> dict[str, float]:
    """Median time of each function, timed in rounds (one run of each per round) so that a
    machine whose speed drifts during the measurement affects all of them alike."""
    return {name: statistics.median(t) for name, t in interleaved_seconds(fns, device, warmup, repeats).items()}


def interleaved_seconds(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 2,
                        repeats: int = 5) -> dict[str, list[float]]:
    """Times of each function in `repeats` rounds (one run of each per round, in order) after
    `warmup` runs of each: times[name][r] is round r's. On a GPU: CUDA events recorded on the
    current stream around each run (the device's time from the first launch to the end of the
    last kernel, idle gaps between launches included)."""
    cuda = torch.device(device).type == "cuda"
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if cuda:
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1e3)
            else:
                start_s = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start_s)
    return times


def copy_bandwidth(x: torch.Tensor, repeats: int = 15) -> float:
    """Bytes per second of x.clone() on x's device, counting the bytes read and the bytes
    written: the ceiling of a memory-bound kernel that reads and writes as much (take x well
    beyond the caches to measure the memory itself)."""
    seconds = interleaved_median_seconds({"copy": lambda: x.clone()}, x.device, 3, repeats)["copy"]
    return 2 * x.numel() * x.element_size() / seconds


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the absolute difference when expected is all zero)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    diff = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    return diff / scale if scale > 0 else diff


def peak_allocated_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak of the bytes allocated by PyTorch on `device` while fn() runs, above what was
    allocated when it started (CUDA: the caching allocator's statistics; CPU: the
    allocation and free events recorded by torch.profiler)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
