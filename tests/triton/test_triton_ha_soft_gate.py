import copy

import pytest
import torch

import rga_ops
from rga_ops.nn import HarmoniousAttention, SoftAttention
from rga_ops.reference import SoftAttn, soft_gate
from rga_ops.testing import randomise_batch_norms
from tests.conftest import assert_relative
from tests.ops.op_tester import raises_exactly
from tests.triton.support import (
    DEVICE,
    DTYPES,
    TRITON_TESTS,
    assert_matches_with_gradients,
    compare_with_float64,
    leaf,
    ops_of,
    randn,
    registrations,
    requires_gpu,
)

pytestmark = TRITON_TESTS

# (B, C, H, W): C above the backward's channel block and not a multiple of it, H = 1, W = 1, B = 1.
SHAPES = [(2, 5, 6, 4), (3, 37, 1, 7), (1, 2, 9, 1)]


def _gate(x, s, alpha, beta):
    return torch.ops.rga_ops_triton.ha_soft_gate(x, s, alpha, beta)


def _inputs(b, c, h, w, dtype=torch.float64, alpha_dtype=None):
    """s >= 0 as SpatialAttn's output is; alpha and beta such that the gate's input changes sign."""
    s = randn(b, 1, h, w, dtype=dtype, seed=1).abs()
    return [randn(b, c, h, w, dtype=dtype), s, randn(b, c, dtype=alpha_dtype or dtype, seed=2),
            randn(c, dtype=alpha_dtype or dtype, seed=3, scale=0.5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gate_matches_reference_forward_and_backward(shape, dtype):
    compare_with_float64(_gate, soft_gate, _inputs(*shape, dtype), dtype, "ha_soft_gate")


def test_float32_coefficients_with_other_inputs():
    """alpha and beta in float32 (as soft_gate_coefficients gives them for half inputs)."""
    x, s, alpha, beta = [leaf(t) for t in _inputs(2, 5, 6, 4, DTYPES[0], torch.float32)]
    out = _gate(x, s, alpha, beta)
    expected = soft_gate(x, s, alpha, beta)
    assert_relative(out, expected, 1e-6, "output")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, s, alpha, beta), grad)
    for name, a, b in zip("x s alpha beta".split(), got, torch.autograd.grad(expected, (x, s, alpha, beta), grad)):
        assert a.dtype == b.dtype, name
        assert_relative(a, b, 1e-6, f"gradient of {name}")


def test_channels_last_and_non_contiguous_x():
    x, s, alpha, beta = _inputs(2, 8, 6, 4)
    for layout in (lambda t: t.to(memory_format=torch.channels_last),
                   lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
                   lambda t: torch.cat((t, t), 1)[:, ::2]):
        compare_with_float64(_gate, soft_gate, [layout(x), s, alpha, beta], torch.float64, "ha_soft_gate")


@pytest.mark.parametrize("registration", registrations())
def test_both_registrations_run_forward_and_backward(registration):
    ops = ops_of(registration)
    inputs = [leaf(t) for t in _inputs(2, 5, 3, 4)]
    assert_matches_with_gradients(ops.ha_soft_gate(*inputs), soft_gate(*inputs), inputs, str(registration))


@pytest.mark.parametrize("registration", registrations())
def test_opcheck(registration):
    if not registration.traceable:
        pytest.skip("a triton_op cannot take fake tensors in the interpreter")
    ops = ops_of(registration)
    inputs = _inputs(2, 5, 4, 6, torch.float32)
    torch.library.opcheck(ops.ha_soft_gate.default, [t.requires_grad_() for t in inputs])
    torch.library.opcheck(ops.ha_soft_gate_backward.default,
                          (torch.randn_like(inputs[0]), *[t.detach() for t in inputs]))


def test_compile_fullgraph():
    inputs = [leaf(t) for t in _inputs(2, 5, 4, 6, torch.float32)]
    loss = lambda *a: _gate(*a).square().sum()  # noqa: E731
    got = torch.compile(loss, fullgraph=True)(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    expected = loss(*inputs)
    assert_relative(got, expected, 1e-5, "compiled loss")
    for a, b in zip(got_grads, torch.autograd.grad(expected, inputs)):
        assert_relative(a, b, 1e-5, "compiled gradient")


def test_bad_input_raises_with_the_op_and_argument():
    """The operator's own checks (those of rga_ops.ha_soft_gate: tests/ops, for every backend)."""
    x, s, alpha, beta = _inputs(2, 4, 6, 4)
    with raises_exactly(ValueError, "rga_ops_triton::ha_soft_gate: alpha must be [B, C] = [2, 4], got shape [2, 3]"):
        _gate(x, s, alpha[:, :3], beta)
    with raises_exactly(ValueError, "rga_ops_triton::ha_soft_gate_backward: grad must have shape [2, 4, 6, 4], "
                                    "got [2, 4, 5, 4]"):
        torch.ops.rga_ops_triton.ha_soft_gate_backward(x[:, :, :5], x, s, alpha, beta)


def _soft_attention_arguments(b, c, h, w):
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64, device="cpu").to(DEVICE)  # noqa: E731
    inputs = [r(b, c, h, w), r(b, 1, h, w).abs() * 2, r(b, c), r(c, c) * 0.3, r(c) * 0.2, r(c).abs() + 0.5, r(c) * 0.3]
    return [t.requires_grad_() for t in inputs], [r(c) * 0.1, r(c).abs() + 0.5]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_ha_soft_gate_with_batch_norm_matches_reference(training):
    """The whole op (closed-form BatchNorm + the Triton gate): output, running statistics, all gradients."""
    inputs, stats = _soft_attention_arguments(3, 6, 4, 5)
    results = {}
    for backend in ("reference", "triton"):
        args = [leaf(t) for t in inputs]
        running = [t.clone() for t in stats]
        out = rga_ops.ha_soft_gate(*args, *running, training, 0.1, 1e-5, backend=backend)
        out.backward(torch.ones_like(out) + out.detach())
        results[backend] = (out.detach(), running, [t.grad for t in args])
    (out, running, grads), (ref_out, ref_running, ref_grads) = results["triton"], results["reference"]
    assert_relative(out, ref_out, 1e-10, "output")
    for a, b in zip(running, ref_running):
        assert_relative(a, b, 1e-10, "running statistics")
    floor = 1e-2 * max(g.abs().max().item() for g in ref_grads)  # the conv bias's gradient is ~0 in training
    for name, a, b in zip("x s c conv_weight conv_bias bn_weight bn_bias".split(), grads, ref_grads):
        err = (a - b).abs().max().item() / max(b.abs().max().item(), floor)
        assert err <= 1e-8, f"gradient of {name}: relative error {err:.3g}"


def test_soft_and_harmonious_attention_gate_match_torchreid():
    torch.manual_seed(0)
    ref = randomise_batch_norms(SoftAttn(16)).double().to(DEVICE)
    ours = SoftAttention(16, backend="triton").double().to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    harmonious = HarmoniousAttention(16, backend="triton").double().to(DEVICE)
    harmonious.soft_attn.load_state_dict(ref.state_dict())
    x = torch.randn(3, 16, 6, 4, dtype=torch.float64, device=DEVICE)
    grad = torch.randn_like(x)
    expected_x = leaf(x)
    reference = copy.deepcopy(ref)
    expected = expected_x * reference(expected_x)
    expected.backward(grad)
    for module, gate in ((ours, lambda m, t: m.gate(t)), (harmonious, lambda m, t: m.gate(t)[0])):
        got_x = leaf(x)
        got = gate(module, got_x)
        got.backward(grad)
        assert_relative(got, expected, 1e-10, "gated output")
        assert_relative(got_x.grad, expected_x.grad, 1e-8, "gradient of x")
    for name, value in ours.state_dict().items():
        if value.is_floating_point():
            assert_relative(value, reference.state_dict()[name], 1e-10, name)


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(32, 128, 40, 16), (32, 384, 10, 4)], ids=str)
def test_hacnn_shapes_on_gpu(shape, dtype):
    compare_with_float64(_gate, soft_gate, _inputs(*shape, dtype), dtype, "ha_soft_gate")
