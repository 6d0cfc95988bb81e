"""Every op x backend x shape, forward and forward + backward, float32 (B = 8 on the CPU, 64 on
a GPU; the HA gate at B = 32): relation_project and relation_stack at each RGA-Net stage's
spatial and channel branches, batch_norm_relu_conv1x1 at each stage's two attention heads,
ha_soft_gate at HA-CNN's three stages. extra_info: GFLOP/s (GEMM-bound ops) or GB/s
(memory-bound ops) of the work defined in benchmarks.op_cases, and the peak memory."""

from __future__ import annotations

import pytest

from . import op_cases
from .conftest import BATCH, DEVICE, PASSES, backends_here
from .shapes import HA_SHAPES, head_shapes, relation_shapes, shape_id

RELATION = [(f"{branch}-C'{ci}-N{n}", (ci, n, k)) for branch, ci, n, k in relation_shapes()]
HEAD = [(f"{branch}-K{k}-M{m}", (k, m, h)) for branch, k, m, h in head_shapes()]
HA_BATCH = 32 if DEVICE.type == "cpu" else 64


def _run(timed, case: op_cases.OpCase, backend: str, what: str) -> None:
    if backend not in case.functions:
        pytest.skip(f"no {backend} variant of this op")
    f = case.functions[backend]
    work = case.forward_work(backend)
    if what == "forward+backward":
        work *= case.step_factor
        call = lambda: f(*case.args).backward(case.grad)  # noqa: E731
    else:  # as in training: autograd records the forward
        call = lambda: f(*case.args)  # noqa: E731
    timed(call, **({"flop": work} if case.unit == "FLOP" else {"bytes_moved": work}))


@pytest.mark.parametrize("what", PASSES)
@pytest.mark.parametrize("backend", backends_here())
@pytest.mark.parametrize("shape", [s for _, s in RELATION], ids=[i for i, _ in RELATION])
@pytest.mark.parametrize("op", ["relation_project", "relation_stack"])
def test_relation_op(timed, op, shape, backend, what):
    _run(timed, op_cases.relation_case(op, BATCH, *shape, DEVICE), backend, what)


@pytest.mark.parametrize("what", PASSES)
@pytest.mark.parametrize("backend", backends_here())
@pytest.mark.parametrize("shape", [s for _, s in HEAD], ids=[i for i, _ in HEAD])
def test_batch_norm_relu_conv1x1(timed, shape, backend, what):
    case = op_cases.head_case(BATCH, *shape, DEVICE)
    if case is None:
        pytest.skip("batch_norm_relu_conv1x1 needs the compiled extension (cpp or cuda)")
    _run(timed, case, backend, what)


@pytest.mark.parametrize("what", PASSES)
@pytest.mark.parametrize("backend", backends_here())
@pytest.mark.parametrize("shape", HA_SHAPES, ids=[shape_id(s) for s in HA_SHAPES])
def test_ha_soft_gate(timed, shape, backend, what):
    _run(timed, op_cases.ha_gate_case(HA_BATCH, *shape, DEVICE), backend, what)
