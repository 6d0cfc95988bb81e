"""The benchmarks compare like with like: every variant of an op case computes what the
reference computes (forward and gradients), and the memory sweep's extrapolation is right."""

from __future__ import annotations

import pytest
import torch

from benchmarks import op_cases
from benchmarks.memory_scaling import _predict
from benchmarks.plots import plot_speedups
from benchmarks.shapes import head_shapes, relation_shapes
from rga_ops.testing import STAGES

CPU = torch.device("cpu")


def _outputs_and_grads(case: op_cases.OpCase, name: str) -> list[torch.Tensor]:
    for t in case.args:
        t.grad = None
    out = case.functions[name](*case.args)
    out.backward(case.grad)
    return [out.detach(), *[t.grad.clone() for t in case.args]]


@pytest.mark.parametrize("case", [
    lambda: op_cases.relation_case("relation_project", 2, 4, 24, 3, CPU),
    lambda: op_cases.relation_case("relation_stack", 2, 4, 24, 3, CPU),
    lambda: op_cases.head_case(2, 16, 24, 2, CPU),
    lambda: op_cases.ha_gate_case(2, 8, 6, 4, CPU),
], ids=["relation_project", "relation_stack", "batch_norm_relu_conv1x1", "ha_soft_gate"])
def test_every_variant_matches_the_reference(case):
    case = case()
    if case is None:
        pytest.skip("batch_norm_relu_conv1x1 needs the compiled extension")
    assert next(iter(case.functions)) == "reference" and len(case.functions) > 1
    expected = _outputs_and_grads(case, "reference")
    for name in list(case.functions)[1:]:
        for got, want in zip(_outputs_and_grads(case, name), expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_shapes_cover_every_stage_branch():
    assert len(list(relation_shapes())) == 2 * len(STAGES)
    heads = list(head_shapes())
    assert len(heads) == len(set(heads)) == 2 * len(STAGES) - 1  # stages 3 and 4 share the 16x8 spatial head
    assert ("spatial", 256, 2048, 32) in heads


def test_power_law_prediction():
    assert _predict([(10, 3.0), (20, 12.0)], 40) == pytest.approx(48.0)  # N^2
    assert _predict([(10, 3.0), (20, 6.0)], 80) == pytest.approx(24.0)  # N
    assert _predict([(10, 5.0)], 30) == pytest.approx(45.0)  # one point: N^2 assumed


def test_speedup_plot_is_written(tmp_path):
    rows = [dict(op="relation_stack", branch="spatial", shape="B=2, C'=4, N=24", variant=v, speedup=s)
            for v, s in (("reference", 1.0), ("cpp", 2.0))]
    path = plot_speedups([], rows, str(tmp_path / "p.png"), "test")
    assert path and (tmp_path / "p.png").stat().st_size > 0
    assert plot_speedups([], [], str(tmp_path / "none.png"), "test") is None
