"""relation_project and relation_stack, forward + backward, per backend, at the
spatial branch of each RGA-Net stage (B = 8 on the CPU, 64 on a GPU)."""

import pytest
import torch

import rga_ops
from rga_ops.check import STAGES

from .conftest import BATCH, DEVICE, backends_here


def _inputs(c, h, w, with_weight):
    n, ci, k = h * w, c // 8, h * w // 8
    make = lambda *s: torch.randn(*s, device=DEVICE, requires_grad=True)  # noqa: E731
    return (make(BATCH, ci, n), make(BATCH, ci, n), make(k, 2 * n)) if with_weight else (make(BATCH, ci, n), make(BATCH, ci, n))


@pytest.mark.parametrize("backend", backends_here())
@pytest.mark.parametrize("stage", STAGES, ids=[f"{c}x{h}x{w}" for c, h, w in STAGES])
def test_relation_project(timed, backend, stage):
    c, h, w = stage
    theta, phi, weight = _inputs(c, h, w, True)
    n, ci, k = h * w, c // 8, h * w // 8
    # Useful work: the re-associated products, 4 K C' N MACs forward and 8 K C' N backward per item.
    timed(lambda: rga_ops.relation_project(theta, phi, weight, backend=backend).sum().backward(),
          flop=2 * 12 * k * ci * n * BATCH)


@pytest.mark.parametrize("backend", backends_here())
@pytest.mark.parametrize("stage", STAGES, ids=[f"{c}x{h}x{w}" for c, h, w in STAGES])
def test_relation_stack(timed, backend, stage):
    c, h, w = stage
    theta, phi = _inputs(c, h, w, False)
    n = h * w
    # Memory traffic floor: J written once forward, its gradient read once backward.
    timed(lambda: rga_ops.relation_stack(theta, phi, backend=backend).sum().backward(),
          bytes_moved=2 * BATCH * 2 * n * n * theta.element_size())
