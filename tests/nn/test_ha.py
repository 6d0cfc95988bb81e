import copy

import pytest
import torch

from rga_ops.nn import HarmoniousAttention, SoftAttention
from rga_ops.reference import HardAttn, HarmAttn, SoftAttn
from rga_ops.testing import randomise_batch_norms
from tests.conftest import DEVICES, assert_relative, fast_backends, on_gpu


def _bn(prefix):
    return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _conv_block(prefix):
    return [f"{prefix}.conv.weight", f"{prefix}.conv.bias", *_bn(f"{prefix}.bn")]


# torchreid's SoftAttn(C) state_dict, in order.
SOFT_ATTN_KEYS = [*_conv_block("spatial_attn.conv1"), *_conv_block("spatial_attn.conv2"),
                  *_conv_block("channel_attn.conv1"), *_conv_block("channel_attn.conv2"), *_conv_block("conv")]
HARM_ATTN_KEYS = [f"soft_attn.{k}" for k in SOFT_ATTN_KEYS] + ["hard_attn.fc.weight", "hard_attn.fc.bias"]


def test_state_dicts_are_torchreids():
    assert list(SoftAttention(64).state_dict()) == SOFT_ATTN_KEYS
    assert list(HarmoniousAttention(64).state_dict()) == HARM_ATTN_KEYS
    shapes = {k: tuple(v.shape) for k, v in HarmoniousAttention(64).state_dict().items()}
    assert shapes["soft_attn.channel_attn.conv1.conv.weight"] == (4, 64, 1, 1)
    assert shapes["soft_attn.conv.conv.weight"] == (64, 64, 1, 1)
    assert shapes["soft_attn.spatial_attn.conv1.conv.weight"] == (1, 1, 3, 3)
    assert shapes["hard_attn.fc.weight"] == (8, 64)
    ours, ref = HarmoniousAttention(32), randomise_batch_norms(HarmAttn(32))
    ours.load_state_dict(ref.state_dict(), strict=True)
    HarmAttn(32).load_state_dict(ours.state_dict(), strict=True)


def test_hard_attention_initialisation():
    fc = HardAttn(16).fc
    assert torch.equal(fc.weight, torch.zeros(8, 16))
    assert torch.equal(fc.bias, torch.tensor([0, -0.75, 0, -0.25, 0, 0.25, 0, 0.75]))


def _step(module, x, grad, method):
    """One forward + backward of `method`: "forward" (the attention map), "gate" (ours), or
    "gated" (x * forward(x)[0], the way torchreid's HA-CNN applies the soft attention)."""
    x = x.detach().clone().requires_grad_()
    out = x * module(x)[0] if method == "gated" else getattr(module, method)(x)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(grad)
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}, \
        {n: b.clone() for n, b in module.named_buffers()}


# (B, training): B = 1 only in eval mode (the channel attention's BatchNorm after global
# pooling sees one value per channel, which BatchNorm refuses in training, in torchreid too).
@pytest.mark.parametrize("shape,training", [((4, 32, 10, 6), True), ((4, 32, 10, 6), False), ((2, 16, 2, 4), True),
                                            ((1, 16, 2, 4), False), ((3, 48, 8, 14), True)], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_forward_and_gate_match_torchreid_in_float64(shape, training, device):
    """forward(x) is SoftAttn(x); gate(x) is x * SoftAttn(x): outputs, every gradient and
    the running statistics after three steps."""
    c = shape[1]
    torch.manual_seed(0)
    ref = randomise_batch_norms(HarmAttn(c)).to(device, torch.float64).train(training)
    inputs = [torch.randn(shape, dtype=torch.float64, device=device) for _ in range(3)]
    grads = [torch.randn(shape, dtype=torch.float64, device=device) for _ in range(3)]
    for backend in fast_backends(device):
        for method in ("forward", "gate"):
            reference = copy.deepcopy(ref)
            ours = HarmoniousAttention(c, backend=backend).to(device, torch.float64).train(training)
            ours.load_state_dict(ref.state_dict())
            for x, grad in zip(inputs, grads):
                ref_out = _step(reference, x, grad, "forward" if method == "forward" else "gated")
                got = _step(ours, x, grad, method)
                assert_relative(got[0], ref_out[0], 1e-10, f"{backend} {method} output")
                assert_relative(got[1], ref_out[1], 1e-8, f"{backend} {method} grad of x")
                floor = 1e-2 * max(g.abs().max().item() for g in ref_out[2].values() if g is not None)
                for name, g in ref_out[2].items():
                    if g is not None:
                        err = (got[2][name] - g).abs().max().item() / max(g.abs().max().item(), floor)
                        assert err <= 1e-8, f"{backend} {method} grad of {name}: {err:.3g}"
                for name, value in ref_out[3].items():
                    assert_relative(got[3][name], value, 1e-10, f"{backend} {method} {name}")
                for module in (reference, ours):
                    module.zero_grad()


@pytest.mark.parametrize("device", DEVICES)
def test_translations_follow_the_input_device_and_dtype(device):
    module = HarmoniousAttention(16).to(device, torch.float64)
    _, theta = module.gate(torch.randn(2, 16, 4, 4, dtype=torch.float64, device=device))
    assert theta.shape == (2, 4, 2) and theta.dtype == torch.float64 and theta.device.type == device


def test_bad_input():
    module = SoftAttention(32)
    with pytest.raises(ValueError, match=r"built for inputs \[B, 32, H, W\], got shape \(2, 16, 4, 4\)"):
        module.gate(torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match="H and W must be even"):
        module(torch.randn(2, 32, 5, 4))
    with pytest.raises(ValueError, match="must be divisible by reduction_rate"):
        SoftAttention(24)


@pytest.mark.slow
@pytest.mark.parametrize("device,backend", [("cpu", "torch"), ("cpu", "cpp"), on_gpu("cuda", "torch"),
                                            on_gpu("cuda", "cuda")])
def test_torch_compile_fullgraph_gate(device, backend):
    if backend not in fast_backends(device):
        pytest.skip(f"backend {backend} is not usable here")
    torch.manual_seed(0)
    eager = randomise_batch_norms(SoftAttention(32, backend=backend)).to(device)
    module = SoftAttention(32, backend=backend).to(device)
    module.load_state_dict(eager.state_dict())
    compiled = torch.compile(module, fullgraph=True)
    x, grad = torch.randn(2, 32, 8, 6, device=device), torch.randn(2, 32, 8, 6, device=device)
    expected, got = _step(eager, x, grad, "gate"), _step(compiled, x, grad, "gate")
    assert_relative(got[0], expected[0], 1e-5, "output")
    assert_relative(got[1], expected[1], 1e-4, "grad of x")
    for name, value in module.named_buffers():
        assert_relative(value, expected[3][name], 1e-5, name)


def _soft_step(module, x, grad, method, x_grad=True):
    """_step for a SoftAttn ("gated": x * module(x), the map not being a tuple) or a
    SoftAttention ("gate"); x_grad=False: x needs no gradient."""
    x = x.detach().clone().requires_grad_(x_grad)
    out = x * module(x) if method == "gated" else module.gate(x)
    out.backward(grad)
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}, \
        {n: b.clone() for n, b in module.named_buffers()}


def _compare_gate(ours, reference, x, grad, tol, tol_grad, what, x_grad=True):
    """ours.gate(x) against x * reference(x): output, every gradient, every buffer."""
    want, got = _soft_step(reference, x, grad, "gated", x_grad), _soft_step(ours, x, grad, "gate", x_grad)
    assert_relative(got[0], want[0], tol, f"{what} output")
    if want[1] is not None:
        assert_relative(got[1], want[1], tol_grad, f"{what} grad of x")
    grads = [g for g in want[2].values() if g is not None]
    floor = 1e-2 * max(g.abs().max().item() for g in grads) if grads else 0.0
    for name, g in want[2].items():
        assert (got[2][name] is None) == (g is None), f"{what} grad of {name}: {got[2][name]} against {g}"
        if g is not None:
            err = (got[2][name].double() - g.double()).abs().max().item() / max(g.abs().max().item(), floor)
            assert err <= tol_grad, f"{what} grad of {name}: {err:.3g}"
    for name, value in want[3].items():
        assert_relative(got[3][name], value, tol, f"{what} {name}")


def _soft_pair(c, backend, dtype=torch.float64):
    torch.manual_seed(0)
    reference = randomise_batch_norms(SoftAttn(c)).to(dtype)
    ours = SoftAttention(c, backend=backend).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


# HA-CNN's three stages and a larger map; training and eval mode, two steps each.
@pytest.mark.parametrize("shape", [(3, 128, 40, 16), (4, 256, 20, 8), (5, 384, 10, 4), (2, 16, 64, 32)], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gate_is_one_autograd_node_and_matches_torchreid_at_hacnn_shapes(shape, training):
    c = shape[1]
    for backend in fast_backends("cpu"):
        ours, reference = _soft_pair(c, backend)
        ours.train(training), reference.train(training)
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        assert type(ours.gate(x).grad_fn).__name__ == "_SoftGateBackward"
        ours.load_state_dict(reference.state_dict())
        for step in range(2):
            x, grad = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
            _compare_gate(ours, reference, x, grad, 1e-10, 1e-8, f"{backend} step {step}")
            ours.zero_grad(), reference.zero_grad()


def test_gate_with_blocks_in_different_modes_and_cumulative_momentum():
    """Each BatchNorm as its own module says: some in eval mode, some averaging cumulatively."""
    for backend in fast_backends("cpu"):
        ours, reference = _soft_pair(32, backend)
        for module in (ours, reference):
            module.train()
            module.channel_attn.conv2.eval()
            module.spatial_attn.conv1.eval()
            module.spatial_attn.conv2.bn.momentum = None
            module.conv.bn.momentum = None
        for step in range(3):
            x, grad = torch.randn(4, 32, 10, 6, dtype=torch.float64), torch.randn(4, 32, 10, 6, dtype=torch.float64)
            _compare_gate(ours, reference, x, grad, 1e-10, 1e-8, f"{backend} step {step}")
            ours.zero_grad(), reference.zero_grad()


def test_gate_gradients_of_parameters_only_or_of_x_only():
    for backend in fast_backends("cpu"):
        ours, reference = _soft_pair(32, backend)
        x, grad = torch.randn(2, 32, 8, 6, dtype=torch.float64), torch.randn(2, 32, 8, 6, dtype=torch.float64)
        _compare_gate(ours, reference, x, grad, 1e-10, 1e-8, f"{backend} parameters only", x_grad=False)
        for module in (ours, reference):
            module.requires_grad_(False)
        _compare_gate(ours, reference, x, grad, 1e-10, 1e-8, f"{backend} x only")


def test_gate_in_float32_and_channels_last():
    for backend in fast_backends("cpu"):
        ours, reference = _soft_pair(64, backend, torch.float32)
        reference64 = SoftAttn(64).double()
        reference64.load_state_dict(reference.state_dict())
        x = torch.randn(8, 64, 20, 8).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(8, 64, 20, 8)
        want, got = _soft_step(reference64, x.double(), grad.double(), "gated"), _soft_step(ours, x, grad, "gate")
        assert_relative(got[0], want[0], 2e-5, f"{backend} output")
        assert_relative(got[1], want[1], 1e-4, f"{backend} grad of x")
        floor = 1e-2 * max(g.abs().max().item() for g in want[2].values())
        for name, g in want[2].items():
            err = (got[2][name].double() - g).abs().max().item() / max(g.abs().max().item(), floor)
            # A conv bias before a training-mode BatchNorm has a zero gradient analytically: what
            # is left is rounding, as large as 1e-4 of the floor in the float32 reference itself.
            tol = 1e-3 if name.endswith("conv.bias") else 1e-4
            assert err <= tol, f"{backend} grad of {name}: {err:.3g}"


def test_gate_of_one_item_in_training_fails_as_torchreids_does():
    ours, reference = _soft_pair(16, "cpp")
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as want:
        x * reference(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as got:
        ours.gate(x)
    assert str(got.value) == str(want.value)


def test_gate_has_no_double_backward():
    ours, _ = _soft_pair(16, "cpp")
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(ours.gate(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward|twice|once_differentiable|does not require grad"):
        gx.sum().backward()
