import pytest
import torch

import rga_ops
from rga_ops.ops.ha_soft_gate import (soft_gate_coefficients, soft_gate_coefficients_and_state,
                                     soft_gate_coefficients_backward)
from tests.conftest import COMPILED_BACKEND, DEVICES, assert_relative, fast_backends, relative_error, requires_cuda
from tests.ops.op_tester import OpTester, raises_exactly

# (outputs and running statistics, gradients): the gradients of a training-mode BatchNorm
# subtract means, which costs a few digits in float32 (and the "torch" backend rounds the gate
# to the input dtype before the product). A sum accumulated in bfloat16 instead of float32 is
# off by several times these.
TOLERANCE = {torch.float64: (1e-10, 1e-8), torch.float32: (2e-5, 1e-4), torch.float16: (2e-3, 2e-3),
             torch.bfloat16: (5e-3, 1e-2)}
INPUT_NAMES = ("x", "s", "c", "conv_weight", "conv_bias", "bn_weight", "bn_bias")


def _arguments(b, c, h, w, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(s, generator=g, dtype=torch.float64)  # noqa: E731
    u = lambda *s: torch.rand(s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs = [r(b, c, h, w), u(b, 1, h, w) * 2, r(b, c), r(c, c) * 0.3, r(c) * 0.2, u(c) + 0.5, r(c) * 0.3]
    stats = [r(c) * 0.1, u(c) + 0.5]
    stat_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return ([t.to(device=device, dtype=dtype).requires_grad_() for t in inputs],
            [t.to(device=device, dtype=stat_dtype) for t in stats])


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
    stat_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    inputs, stats = _arguments(*shape, dtype=dtype, device=device)
    stats = [t.to(stat_dtype) for t in stats]
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)
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


def _gate64(x, s, alpha, beta):
    z = alpha.double()[:, :, None, None] * s.double() + beta.double()[None, :, None, None]
    return torch.sigmoid(torch.relu(z)), z


# H*W = 48 and 4 take the CUDA forward's 16-byte vectors in every dtype (8 half or bfloat16
# elements, 4 float32, 2 float64), 60 in float32 and float64 only; 35 and 9 never.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 32, 10, 6), (2, 16, 8, 6), (1, 3, 5, 7), (2, 1, 2, 2), (3, 48, 1, 9)], ids=str)
def test_matches_reference(device, dtype, training, shape):
    _compare(device, dtype, shape, training)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_misaligned_inputs_take_the_element_path(device, dtype):
    """x, s and grad one element past an aligned address (a storage offset): the CUDA forward
    cannot use 16-byte vectors there, even at H*W = 48; every kernel against float64."""
    b, c, h, w = 2, 16, 8, 6
    (x, s, *_), _ = _arguments(b, c, h, w, dtype=dtype, device=device)

    def shifted(t: torch.Tensor) -> torch.Tensor:
        storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        out = storage[1:].view(t.shape)
        out.copy_(t.detach())
        assert out.storage_offset() == 1
        return out

    alpha = torch.randn(b, c, dtype=torch.float64, device=device)
    beta = torch.randn(c, dtype=torch.float64, device=device) * 0.5
    stat_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    gate, z = _gate64(x, s, alpha, beta)
    grad = torch.randn(b, c, h, w, dtype=torch.float64, device=device).to(dtype)
    dz = torch.where(z > 0, grad.double() * x.double() * gate * (1 - gate), 0)
    expected = (grad.double() * gate, (dz * alpha[:, :, None, None]).sum(1, keepdim=True),
                (dz * s.double()).sum((2, 3)), dz.sum((0, 2, 3)))
    tol = TOLERANCE[dtype][0]
    backend = COMPILED_BACKEND[device]
    if backend not in fast_backends(device):
        pytest.skip(f"the {backend} backend is not usable here")
    out = torch.ops.rga_ops.ha_soft_gate(shifted(x), shifted(s), alpha.to(stat_dtype), beta.to(stat_dtype))
    assert_relative(out, x.double() * gate, tol, f"{backend} out")
    grads = torch.ops.rga_ops.ha_soft_gate_backward(shifted(grad), shifted(x), shifted(s), alpha.to(stat_dtype),
                                                    beta.to(stat_dtype))
    for name, got, want in zip(("dx", "ds", "dalpha", "dbeta"), grads, expected):
        assert_relative(got, want, tol, f"{backend} {name}")


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


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("shape", [(4, 16, 6, 4), (2, 8, 1, 2)], ids=str)
def test_closed_form_backward_of_the_coefficients(training, affine, shape):
    """soft_gate_coefficients_backward (which SoftAttention.gate's single autograd node uses)
    against autograd through soft_gate_coefficients, in float64."""
    b, c, h, w = shape
    inputs, stats = _arguments(b, c, h, w)
    s, cv, weight, bias, bn_weight, bn_bias = (t.detach().requires_grad_() for t in inputs[1:])
    if not affine:
        bn_weight = bn_bias = None
    g = torch.Generator().manual_seed(3)
    grad_alpha, grad_beta = (torch.randn(b, c, generator=g, dtype=torch.float64),
                             torch.randn(c, generator=g, dtype=torch.float64))
    leaves = [t for t in (s, cv, weight, bias, bn_weight, bn_bias) if t is not None]
    alpha, beta, state = soft_gate_coefficients_and_state(s, cv, weight, bias, bn_weight, bn_bias, *stats, training,
                                                          0.1, 1e-5)
    want = torch.autograd.grad((alpha, beta), leaves, (grad_alpha, grad_beta), allow_unused=True)
    with torch.no_grad():
        got = soft_gate_coefficients_backward(state, s, cv, weight, bn_weight, grad_alpha, grad_beta)
    got = [t for t, leaf in zip(got, (s, cv, weight, bias, bn_weight, bn_bias)) if leaf is not None]
    floor = 1e-2 * max(t.abs().max().item() for t in want if t is not None)
    for name, a, e in zip(("s", "c", "conv_weight", "conv_bias", "bn_weight", "bn_bias"), got, want):
        if e is None:  # s in eval mode: the statistics are the running ones
            assert a is None or a.abs().max().item() == 0, name
            continue
        err = (a - e).abs().max().item() / max(e.abs().max().item(), floor)
        assert err <= 1e-10, f"grad of {name}: {err:.3g}"


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 2), (1, 33, 3, 5)], ids=str)
def test_gradcheck(device, shape):
    inputs, stats = _arguments(*shape, device=device)
    for backend in fast_backends(device):
        for training in (True, False):
            assert torch.autograd.gradcheck(
                lambda *a: rga_ops.ha_soft_gate(*a, *[t.clone() for t in stats], training, 0.1, 1e-5, backend=backend),
                inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 5, 4, 6), (2, 40, 15, 9)], ids=str)
def test_opcheck(device, shape):
    """Both kernel paths on CUDA: 16-byte vectors (H*W = 24) and single elements (H*W = 135, odd)."""
    b, c, h, w = shape
    x, s = torch.randn(shape, device=device), torch.rand(b, 1, h, w, device=device)
    for dtype, alpha_dtype in ((torch.float32, torch.float32), (torch.float64, torch.float64),
                               (torch.bfloat16, torch.float32)):
        x_, s_ = x.to(dtype), s.to(dtype)
        alpha = torch.randn(b, c, dtype=alpha_dtype, device=device)
        beta = torch.randn(c, dtype=alpha_dtype, device=device)
        args = [t.requires_grad_() for t in (x_, s_, alpha, beta)]
        torch.library.opcheck(torch.ops.rga_ops.ha_soft_gate.default, args)
        torch.library.opcheck(torch.ops.rga_ops.ha_soft_gate_backward.default,
                              (torch.randn_like(x_), *[t.detach() for t in args]))


class TestHaSoftGate(OpTester):
    """The bad inputs and double backward of OpTester; the parity, gradcheck and opcheck tests are
    this module's own (running statistics, both modes, both memory paths of the CUDA kernel)."""

    name = operator = "ha_soft_gate"
    gradcheck_shapes = [(2, 3, 4, 2)]
    differentiable = (0, 1, 2, 3, 4, 5, 6)
    test_matches_reference_forward_and_backward = test_gradcheck = test_opcheck = None

    def inputs(self, shape, dtype, device):
        tensors, stats = _arguments(*shape, dtype=dtype, device=device)
        return [*[t.detach() for t in tensors], *stats, True, 0.1, 1e-5]

    def bad_inputs(self, device):
        """The faults in x and s also go to the registered operators (with c as alpha, conv_bias
        as beta); those in the function's other arguments only to the function."""
        x, s, c, w, b, bw, bb, rm, rv, *flags = self.inputs((2, 4, 6, 4), torch.float64, device)
        for bad_x, bad_s, error, message in (
                (x, s[:, :, :, :3], ValueError, "s must be [B, 1, H, W] = [2, 1, 6, 4], got shape [2, 1, 6, 3]"),
                (x[0], s, ValueError, "x must have 4 dimensions [B, C, H, W], got shape [4, 6, 4]"),
                (x.long(), s, TypeError, "x must be a floating-point tensor, got dtype torch.int64"),
                (x, s.float(), TypeError, "s must have the dtype of x (torch.float64), got torch.float32")):
            yield [bad_x, bad_s, c, w, b, bw, bb, rm, rv, *flags], error, message, [bad_x, bad_s, c, b]
        yield [x, s, c[:, :, None, None], w, b, bw, bb, rm, rv, *flags], ValueError, (
            "c must be [B, C] = [2, 4], got shape [2, 4, 1, 1]"), None
        yield [x, s, c, w[:, :3], b, bw, bb, rm, rv, *flags], ValueError, (
            "conv_weight must be [C, C] = [4, 4], got shape [4, 3]"), None
        yield [x, s, c, w, b, bw, bb, rm.to("meta"), rv, *flags], ValueError, (
            f"running_mean must be on the device of x ({x.device}), got meta"), None
        yield [x, s, c, w, b, bw, bb, None, None, False, 0.1, 1e-5], ValueError, (
            "evaluation (training=False) needs running_mean and running_var"), None


@pytest.mark.parametrize("device", DEVICES)
def test_operator_checks_its_coefficients(device):
    x, s = torch.randn(2, 4, 6, 4, device=device), torch.rand(2, 1, 6, 4, device=device)
    with raises_exactly(ValueError, "rga_ops::ha_soft_gate: alpha must be [B, C] = [2, 4], got shape [2, 3]"):
        torch.ops.rga_ops.ha_soft_gate(x, s, torch.randn(2, 3, device=device), torch.randn(4, device=device))
    with raises_exactly(TypeError, "rga_ops::ha_soft_gate: alpha must have the dtype of x (torch.float32) or float32, "
                                   "got torch.float64"):
        torch.ops.rga_ops.ha_soft_gate(x, s, torch.randn(2, 4, device=device).double(),
                                       torch.randn(4, device=device).double())


@requires_cuda
def test_cuda_kernel_rejects_a_cpu_argument_by_name():
    x, s = torch.randn(2, 4, 6, 4, device="cuda"), torch.rand(2, 1, 6, 4, device="cuda")
    alpha, beta = torch.randn(2, 4, device="cuda"), torch.randn(4, device="cuda")
    with pytest.raises(ValueError, match=r"beta must be on the device of x \(cuda:0\), got cpu"):
        torch.ops.rga_ops.ha_soft_gate(x, s, alpha, beta.cpu())


@requires_cuda
@pytest.mark.slow
def test_cuda_more_than_2_to_the_31_elements():
    """x with just over 2^31 elements and an odd H*W (the kernels' 64-bit indexing): the last channels
    of the gate and of every gradient against float64 (ds in full, summed over channels in chunks)."""
    b, c, h, w = 1, 32783, 257, 255
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, c, h, w, device="cuda", dtype=torch.bfloat16, generator=g)
    assert x.numel() > 2**31
    s = torch.rand(b, 1, h, w, device="cuda", dtype=torch.bfloat16, generator=g) * 2
    alpha, beta = torch.randn(b, c, device="cuda", generator=g), torch.randn(c, device="cuda", generator=g)
    out = torch.ops.rga_ops.ha_soft_gate(x, s, alpha, beta)
    tail = slice(c - 8, c)
    gate, _ = _gate64(x[:, tail], s, alpha[:, tail], beta[tail])
    assert_relative(out[:, tail], x[:, tail].double() * gate, 1e-2, "out, last channels")
    grad = torch.randn(x.shape, device="cuda", dtype=torch.bfloat16, generator=g)
    del out
    dx, ds, dalpha, dbeta = torch.ops.rga_ops.ha_soft_gate_backward(grad, x, s, alpha, beta)
    expected_ds = torch.zeros(b, 1, h, w, device="cuda", dtype=torch.float64)
    for chunk in torch.arange(c, device="cuda").split(4096):
        gate, z = _gate64(x[:, chunk], s, alpha[:, chunk], beta[chunk])
        dz = torch.where(z > 0, grad[:, chunk].double() * x[:, chunk].double() * gate * (1 - gate), 0)
        expected_ds += (dz * alpha[:, chunk].double()[:, :, None, None]).sum(1, keepdim=True)
        if chunk[-1] == c - 1:
            last = slice(-8, None)
            assert_relative(dx[:, tail], grad[:, tail].double() * gate[:, last], 1e-2, "dx, last channels")
            assert_relative(dalpha[:, tail], (dz[:, last] * s.double()).sum((2, 3)), 1e-4, "dalpha, last channels")
            assert_relative(dbeta[tail], dz[:, last].sum((0, 2, 3)), 1e-4, "dbeta, last channels")
    assert_relative(ds, expected_ds, 1e-2, "ds (bfloat16, as s)")


@requires_cuda
def test_cuda_graphs_on_a_side_stream():
    """torch.compile(mode="reduce-overhead") of the gate's forward and backward (CUDA graphs),
    run on a stream other than the default one: the same results as eager, run after run."""
    (x, s, *params), stats = _arguments(4, 32, 10, 6, dtype=torch.float32, device="cuda")

    def step(fn, i):
        inputs = [(t.detach() * (1 + 0.1 * i)).requires_grad_() for t in (x, s, *params)]
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        return [out.detach().clone()] + [t.grad for t in inputs]

    def gate(*inputs):
        return rga_ops.ha_soft_gate(*inputs, *stats, False, 0.1, 1e-5, backend="cuda")

    compiled = torch.compile(gate, mode="reduce-overhead")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        results = [step(compiled, i) for i in range(4)]
        expected = [step(gate, i) for i in range(4)]
    torch.cuda.current_stream().wait_stream(stream)
    for got, want in zip(results, expected):
        for g, w in zip(got, want):
            assert_relative(g, w, 1e-5, "compiled")
