"""RGAModule and SoftAttention with backend="triton": the same outputs, running statistics and
gradients as the reference modules, eager and under torch.compile(fullgraph=True). The
modules compile with the aot_eager backend, which traces everything Inductor would (the whole
graph, the fake kernels, the backward) without generating C++ code for every plain op on the
CPU (a minute each here); tests/triton/test_triton_<op>.py compile each op with Inductor."""

import pytest
import torch

from rga_ops import testing
from rga_ops.nn import RGAModule, SoftAttention
from rga_ops.reference import SoftAttn
from rga_ops.testing import randomise_batch_norms, training_step
from tests.conftest import assert_relative
from tests.triton.support import DEVICE, TRITON_TESTS, requires_gpu

pytestmark = TRITON_TESTS
COMPILER = "aot_eager" if DEVICE == "cpu" else "inductor"


def _assert_within(errors: dict[str, dict[str, float]], tol: float) -> None:
    for what, err in errors["triton"].items():
        assert err <= tol, f"triton {what}: relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(2, 16, 9, 7), (1, 24, 4, 5)], ids=str)
def test_rga_module_matches_reference_in_float64(shape, training):
    b, c, h, w = shape
    if DEVICE != "cpu":
        pytest.skip("rga_ops.check compares on the CPU; the GPU test is test_rga_module_stage_shape_on_gpu")
    errors = testing.compare_with_reference(c, h, w, "rgasc", training, torch.float64, b, ["triton"], ratios=(4, 4, 2))
    _assert_within(errors, 1e-8)


@requires_gpu
def test_rga_module_stage_shape_on_gpu():
    torch.manual_seed(0)
    reference = randomise_batch_norms(RGAModule(256, 64 * 32, backend="reference")).double().cuda()
    ours = RGAModule(256, 64 * 32, backend="triton").double().cuda()
    ours.load_state_dict(reference.state_dict())
    x, grad = (torch.randn(2, 256, 64, 32, dtype=torch.float64, device="cuda") for _ in range(2))
    expected, got = training_step(reference, x, grad), training_step(ours, x, grad)
    for name, value in expected.items():
        assert_relative(got[name], value, 1e-8, name)


def test_rga_module_compiles_fullgraph():
    torch.manual_seed(0)
    eager = randomise_batch_norms(RGAModule(32, 48, True, True, 4, 4, 2, backend="triton")).to(DEVICE)
    compiled_module = RGAModule(32, 48, True, True, 4, 4, 2, backend="triton").to(DEVICE)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True, backend=COMPILER)
    x, grad = torch.randn(2, 32, 8, 6, device=DEVICE), torch.randn(2, 32, 8, 6, device=DEVICE)
    expected, got = training_step(eager, x, grad), training_step(compiled, x, grad)
    assert_relative(got["output"], expected["output"], 1e-5, "output")
    assert_relative(got["grad of the input"], expected["grad of the input"], 1e-4, "grad of the input")
    for name, value in compiled_module.named_parameters():
        assert_relative(value.grad, expected[f"grad of {name}"], 1e-3, f"grad of {name}")


def test_soft_attention_gate_compiles_fullgraph():
    torch.manual_seed(0)
    eager = randomise_batch_norms(SoftAttn(16)).to(DEVICE)
    module = SoftAttention(16, backend="triton").to(DEVICE)
    module.load_state_dict(eager.state_dict())
    compiled = torch.compile(module.gate, fullgraph=True, backend=COMPILER)
    x = torch.randn(2, 16, 6, 4, device=DEVICE, requires_grad=True)
    got = compiled(x)
    (grad,) = torch.autograd.grad(got.square().sum(), x)
    x_ref = x.detach().requires_grad_()
    expected = x_ref * eager(x_ref)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x_ref)
    assert_relative(got, expected, 1e-5, "output")
    assert_relative(grad, expected_grad, 1e-4, "grad of x")
