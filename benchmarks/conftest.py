"""pytest-benchmark microbenchmarks: `pytest benchmarks` (add --benchmark-json=FILE to keep
the numbers). Timing lives here, never in tests/."""

from __future__ import annotations

import pytest
import torch

from .device import timed_backends

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BATCH = 8 if DEVICE.type == "cpu" else 64


def backends_here() -> list[str]:
    return ["reference", *timed_backends(DEVICE)]


@pytest.fixture
def timed(benchmark):
    """benchmark(fn) with a GPU synchronisation after each call, a warm-up and few rounds
    (the reference takes a second per call on a 2-core CPU)."""
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)

    def run(fn, rounds: int = 5, flop: float | None = None, bytes_moved: float | None = None):
        def call():
            fn()
            sync()

        benchmark.extra_info["device"] = str(DEVICE)
        benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)
        median = benchmark.stats.stats.median
        if flop is not None:
            benchmark.extra_info["GFLOP/s"] = flop / median / 1e9
        if bytes_moved is not None:
            benchmark.extra_info["GB/s"] = bytes_moved / median / 1e9

    return run
