"""pytest-benchmark microbenchmarks: `pytest benchmarks/ --benchmark-only` (add
--benchmark-json=FILE to keep the numbers, -k to pick ops, shapes or backends;
--benchmark-disable runs each case once, untimed). Not collected
by the plain `pytest` run (testpaths = tests). Timing lives here and in benchmarks.run, never in
tests/."""

from __future__ import annotations

import pytest
import torch

from rga_ops.profiling import peak_allocated_bytes

from .device import timed_backends

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH = 8 if DEVICE.type == "cpu" else 64
PASSES = ("forward", "forward+backward")


def backends_here() -> list[str]:
    return ["reference", *timed_backends(DEVICE)]


@pytest.fixture
def timed(benchmark):
    """benchmark(fn) with a GPU synchronisation after each call, a warm-up and few rounds (the
    reference takes seconds per call on a 2-core CPU). extra_info: the device, GFLOP/s of `flop`,
    GB/s of `bytes_moved` or images/s of `images` per median call, and the peak memory allocated during one more call
    above what existed before (rga_ops.profiling.peak_allocated_bytes)."""
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)

    def run(fn, rounds: int = 5, flop: float | None = None, bytes_moved: float | None = None,
            images: int | None = None):
        def call():
            fn()
            sync()

        benchmark.extra_info["device"] = str(DEVICE)
        benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)
        if benchmark.stats is None:  # --benchmark-disable: each function ran once, untimed
            return
        median = benchmark.stats.stats.median
        if flop is not None:
            benchmark.extra_info["GFLOP/s"] = flop / median / 1e9
        if bytes_moved is not None:
            benchmark.extra_info["GB/s"] = bytes_moved / median / 1e9
        if images is not None:
            benchmark.extra_info["images/s"] = images / median
        benchmark.extra_info["peak MB"] = peak_allocated_bytes(call, DEVICE) / 2**20

    return run
