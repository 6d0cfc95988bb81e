import pytest
import torch

import rga_ops
from rga_ops.ops.ha_soft_gate import soft_gate_coefficients
from tests.conftest import DEVICES, assert_relative, fast_backends, relative_error

# (outputs and running statistics, gradients): the gradients of a training-mode BatchNorm
# subtract means, which costs a few digits in float32.
TOLERANCE = {torch.float64: (1e-10, 1e-8), torch.float32: (2e-5, 1e-4), torch.bfloat16: (1e-2, 2e-2)}
INPUT_NAMES = ("x", "s", "c", "conv_weight", "conv_bias", "bn_weight", "bn_bias")


def _arguments(b, c, h, w, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(s, generator=g, dtype=torch.float64)  # noqa: E731
    u = lambda *s: torch.rand(s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs = [r(b, c, h, w), u(b, 1, h, w) * 2, r(b, c), r(c, c) * 0.3, r(c) * 0.2, u(c) + 0.5, r(c) * 0.3]
    stats = [r(c) * 0.1, u(c) + 0.5]
    return ([t.to(device=device, dtype=dtype).requires_grad_() for t in inputs],
            [t.to(device=device, dtype=torch.float32 if dtype == torch.bfloat16 else dtype) for t in stats])


def _run(backend, inputs, stats, training, grad):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    stats = [t.clone() for t in stats]
    out = rga_ops.ha_soft_gate(*inputs, *stats, training, 0.1, 1e-5, backend=backend)
    out.backward(grad)
    return out.detach(), stats, {n: t.grad for n, t in zip(INPUT_NAMES, inputs)}


def _compare(device, dtype, shape, training):
    """Each fast backend in `dtype` against the reference in float64 on the same
    (rounded to `dtype`) inputs, so that only the computation's rounding counts."""
    tol, tol_grad = TOLERANCE[dtype]
    stat_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    inputs, stats = _arguments(*shape, dtype=dtype, device=device)
    stats = [t.to(stat_dtype) for t in stats]
    grad = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    out_r, stats_r, grads_r = _run("reference", [t.double() for t in inputs], [t.double() for t in stats],
                                   training, grad.double())
    for backend in fast_backends(device):
        out, stats_b, grads = _run(backend, inputs, stats, training, grad)
        assert out.dtype == dtype
        assert_relative(out, out_r, tol, f"{backend} output")
        for name, a, b in zip(("running_mean", "running_var"), stats_b, stats_r):
            assert_relative(a, b, tol, f"{backend} {name}")
        # Gradients that are (nearly) zero analytically, such as the conv bias's in training mode
        # (BatchNorm removes it) or, at B = 1, those through the channel vector, are measured
        # against the largest gradient instead of their own magnitude.
        floor = 1e-2 * max(g.abs().max().item() for g in grads_r.values())
        # With one item in training mode the normalised output depends on c only through sign(W c)
        # and eps: those gradients are pure rounding noise below float64.
        skip = {"c", "conv_weight"} if training and shape[0] == 1 and dtype != torch.float64 else set()
        for name in set(INPUT_NAMES) - skip:
            diff = (grads[name].double() - grads_r[name]).abs().max().item()
            err = diff / max(grads_r[name].abs().max().item(), floor)
            assert err <= tol_grad, f"{backend} grad of {name}: relative error {err:.3g} > {tol_grad:g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 32, 10, 6), (1, 3, 5, 7), (2, 1, 2, 2), (3, 48, 1, 9)], ids=str)
def test_matches_reference(device, dtype, training, shape):
    _compare(device, dtype, shape, training)


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(8, 128, 40, 16), (8, 256, 20, 8), (8, 384, 10, 4)], ids=str)
def test_hacnn_shapes_float64(training, shape):
    _compare("cpu", torch.float64, shape, training)


def test_running_statistics_over_several_steps_and_cumulative_momentum():
    inputs, stats = _arguments(3, 16, 6, 4)
    ref_stats, our_stats = [t.clone() for t in stats], [t.clone() for t in stats]
    for step, momentum in enumerate((0.1, 0.5, 1.0 / 3)):
        x = [t.detach() * (1 + step) for t in inputs]
        rga_ops.ha_soft_gate(*x, *ref_stats, True, momentum, 1e-5, backend="reference")
        rga_ops.ha_soft_gate(*x, *our_stats, True, momentum, 1e-5, backend="cpp")
    for a, b in zip(our_stats, ref_stats):
        assert_relative(a, b, 1e-12)


def test_variance_of_an_offset_spatial_map_in_float32():
    """s = 1000 + small noise: the naive E[y^2] - E[y]^2 cancels completely in float32."""
    inputs, stats = _arguments(4, 8, 6, 6)
    s64 = 1000 + inputs[1].detach() * 1e-2
    c, w, bias = (t.detach() for t in inputs[2:5])
    alpha64, beta64 = soft_gate_coefficients(s64, c, w, bias, None, None, None, None, True, 0.1, 1e-5)
    alpha32, beta32 = soft_gate_coefficients(s64.float(), c.float(), w.float(), bias.float(), None, None, None,
                                             None, True, 0.1, 1e-5)
    assert relative_error(alpha32, alpha64) < 1e-2 and relative_error(beta32, beta64) < 1e-2


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_non_contiguous_x(device):
    inputs, stats = _arguments(2, 8, 6, 4, device=device)
    grad = torch.randn(2, 8, 6, 4, dtype=torch.float64, device=device)
    expected = _run("reference", inputs, stats, True, grad)
    for layout in (lambda t: t.to(memory_format=torch.channels_last), lambda t: t.transpose(2, 3).contiguous().transpose(2, 3)):
        x = layout(inputs[0].detach())
        for backend in fast_backends(device):
            out, _, grads = _run(backend, [x, *inputs[1:]], stats, True, grad)
            assert_relative(out, expected[0], 1e-12, backend)
            assert_relative(grads["x"], expected[2]["x"], 1e-12, backend)


def test_gradcheck_cpp():
    inputs, stats = _arguments(2, 3, 4, 2)
    for training in (True, False):
        assert torch.autograd.gradcheck(
            lambda *a: rga_ops.ha_soft_gate(*a, *[t.clone() for t in stats], training, 0.1, 1e-5, backend="cpp"),
            inputs)


def test_opcheck():
    x, s = torch.randn(2, 5, 4, 6), torch.rand(2, 1, 4, 6)
    for alpha_dtype in (torch.float32, torch.float64):
        x_, s_ = x.to(alpha_dtype), s.to(alpha_dtype)
        alpha, beta = torch.randn(2, 5, dtype=alpha_dtype), torch.randn(5, dtype=alpha_dtype)
        args = [t.requires_grad_() for t in (x_, s_, alpha, beta)]
        torch.library.opcheck(torch.ops.rga_ops.ha_soft_gate.default, args)
        torch.library.opcheck(torch.ops.rga_ops.ha_soft_gate_backward.default,
                              (torch.randn_like(x_), *[t.detach() for t in args]))


def test_bad_input():
    (x, s, c, w, b, bw, bb), (rm, rv) = _arguments(2, 4, 6, 4)
    call = lambda *a, **k: rga_ops.ha_soft_gate(*a, True, 0.1, 1e-5, **k)  # noqa: E731
    with pytest.raises(ValueError, match=r"s must have shape \[2, 1, 6, 4\], got \[2, 1, 6, 5\]"):
        call(x, torch.rand(2, 1, 6, 5, dtype=x.dtype), c, w, b, bw, bb, rm, rv)
    with pytest.raises(ValueError, match=r"c must have shape \[2, 4\], got \[2, 4, 1, 1\]"):
        call(x, s, c[:, :, None, None], w, b, bw, bb, rm, rv)
    with pytest.raises(ValueError, match=r"conv_weight must have shape \[4, 4\]"):
        call(x, s, c, w[:, :3], b, bw, bb, rm, rv)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        call(x.long(), s, c, w, b, bw, bb, rm, rv)
    with pytest.raises(TypeError, match="s must have the dtype of x"):
        call(x, s.float(), c, w, b, bw, bb, rm, rv)
    with pytest.raises(ValueError, match="running_mean must be on the device of x"):
        call(x, s, c, w, b, bw, bb, rm.to("meta"), rv)
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        rga_ops.ha_soft_gate(x, s, c, w, b, bw, bb, None, None, False)
    with pytest.raises(ValueError, match=r"rga_ops::ha_soft_gate: alpha must be \[B, C\] = \[2, 4\]"):
        torch.ops.rga_ops.ha_soft_gate(x, s, torch.randn(2, 3, dtype=x.dtype), torch.randn(4, dtype=x.dtype))
