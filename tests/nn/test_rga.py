import pytest
import torch

from rga_ops.nn import RGAModule
from rga_ops.reference import ReferenceRGAModule
from tests.conftest import assert_relative, fast_backends

# RGA-Net's four stages at 256x128 input: (in_channel, H, W).
STAGES = [(256, 64, 32), (512, 32, 16), (1024, 16, 8), (2048, 16, 8)]
BRANCHES = {"sc": (True, True), "s": (True, False), "c": (False, True)}


def _randomised(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial BatchNorm parameters and running statistics, so that eval mode
    and the affine parts are exercised too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.dtype.is_floating_point and t.dim() == 1:
                positive = name.endswith(("running_var", "weight"))
                t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) * 0.5 + 0.75 if positive
                        else torch.randn(t.shape, generator=g, dtype=torch.float64) * 0.1)
    return module


def _run(module, x, grad):
    """Output, input gradient, parameter gradients and buffers after one step."""
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(grad)
    return (out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()},
            {n: b.detach().clone() for n, b in module.named_buffers()})


def compare_with_reference(c, h, w, branch, training, dtype, batch, tol_out, tol_grad, ratios=(8, 8, 8),
                           memory_format=torch.contiguous_format):
    """Every fast CPU backend against ReferenceRGAModule with the same state."""
    torch.manual_seed(0)
    ref = _randomised(ReferenceRGAModule(c, h * w, *BRANCHES[branch], *ratios)).to(dtype).train(training)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    x = torch.randn(batch, c, h, w, dtype=dtype)
    grad = torch.randn(batch, c, h, w, dtype=dtype)
    out_r, dx_r, dp_r, buf_r = _run(ref, x, grad)
    for backend in fast_backends("cpu"):
        module = RGAModule(c, h * w, *BRANCHES[branch], *ratios, backend=backend).to(dtype).train(training)
        module.load_state_dict(state)
        out, dx, dp, buf = _run(module, x.to(memory_format=memory_format), grad)
        assert_relative(out, out_r, tol_out, f"{backend} output")
        for name in buf_r:
            assert_relative(buf[name], buf_r[name], tol_out, f"{backend} {name}")
        if tol_grad is not None:
            assert_relative(dx, dx_r, tol_grad, f"{backend} grad of the input")
            for name in dp_r:
                assert_relative(dp[name], dp_r[name], tol_grad, f"{backend} grad of {name}")


stage_ids = [f"{c}x{h}x{w}" for c, h, w in STAGES]


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("branch", list(BRANCHES))
@pytest.mark.parametrize("stage", STAGES, ids=stage_ids)
def test_stage_shapes_float64_outputs_statistics_and_gradients(stage, branch, training):
    compare_with_reference(*stage, branch, training, torch.float64, 2, 1e-6, 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("branch", list(BRANCHES))
@pytest.mark.parametrize("stage", STAGES, ids=stage_ids)
def test_stage_shapes_float32_outputs_and_statistics(stage, branch, training):
    compare_with_reference(*stage, branch, training, torch.float32, 2, 1e-4, None)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("branch", list(BRANCHES))
@pytest.mark.parametrize("shape", [(1, 64, 8, 8), (3, 40, 5, 13), (2, 16, 9, 7)], ids=str)
def test_small_odd_shapes_and_batch_one(shape, branch, training):
    b, c, h, w = shape
    compare_with_reference(c, h, w, branch, training, torch.float64, b, 1e-10, 1e-8, ratios=(4, 4, 2))


@pytest.mark.parametrize("branch", list(BRANCHES))
def test_channels_last_input(branch):
    compare_with_reference(32, 8, 6, branch, True, torch.float64, 2, 1e-10, 1e-8, ratios=(4, 4, 2),
                           memory_format=torch.channels_last)


def _cumulative_average(module: torch.nn.Module) -> torch.nn.Module:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    return module


def test_momentum_none_and_several_steps_keep_the_same_running_statistics():
    torch.manual_seed(0)
    args = (32, 48, True, True, 4, 4, 2)
    initial = ReferenceRGAModule(*args).double().state_dict()
    inputs = [torch.randn(2, 32, 8, 6, dtype=torch.float64) for _ in range(3)]
    reference = _cumulative_average(ReferenceRGAModule(*args).double())
    reference.load_state_dict(initial)
    for x in inputs:
        reference(x)
    for backend in fast_backends("cpu"):
        module = _cumulative_average(RGAModule(*args, backend=backend).double())
        module.load_state_dict(initial)
        for x in inputs:
            module(x)
        state = module.state_dict()
        for name, value in reference.state_dict().items():
            assert_relative(state[name], value, 1e-12, f"{backend} {name}")


_BN = ("weight", "bias", "running_mean", "running_var")


def _bn_keys(prefix, width):
    return [(f"{prefix}.{k}", (width,)) for k in _BN] + [(f"{prefix}.num_batches_tracked", ())]


def _embedding_keys(name, inp, out):
    return [(f"{name}.0.weight", (out, inp, 1, 1)), *_bn_keys(f"{name}.1", out)]


def _head_keys(name, inp, hidden):
    return [(f"{name}.0.weight", (hidden, inp, 1, 1)), *_bn_keys(f"{name}.1", hidden),
            (f"{name}.3.weight", (1, hidden, 1, 1)), *_bn_keys(f"{name}.4", 1)]


# The official RGA_Module(256, 2048) (first stage of RGA-Net): names in registration order, shapes.
OFFICIAL_STATE_256_2048 = [
    *_embedding_keys("gx_spatial", 256, 32), *_embedding_keys("gx_channel", 2048, 256),
    *_embedding_keys("gg_spatial", 4096, 256), *_embedding_keys("gg_channel", 512, 32),
    *_head_keys("W_spatial", 257, 32), *_head_keys("W_channel", 33, 4),
    *_embedding_keys("theta_spatial", 256, 32), *_embedding_keys("phi_spatial", 256, 32),
    *_embedding_keys("theta_channel", 2048, 256), *_embedding_keys("phi_channel", 2048, 256),
]


def test_state_dict_is_the_official_one():
    state = RGAModule(256, 2048).state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == OFFICIAL_STATE_256_2048
    spatial_only = [k for k, _ in OFFICIAL_STATE_256_2048 if "spatial" in k]
    assert list(RGAModule(256, 2048, use_channel=False).state_dict()) == spatial_only


def test_state_dicts_load_both_ways_strictly():
    ours, ref = RGAModule(64, 64, backend="torch"), _randomised(ReferenceRGAModule(64, 64))
    ours.load_state_dict(ref.state_dict(), strict=True)
    ReferenceRGAModule(64, 64).load_state_dict(ours.state_dict(), strict=True)
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_input_of_another_size_raises_a_clear_error():
    module = RGAModule(64, 8 * 8)
    with pytest.raises(ValueError, match=r"built for inputs \[B, 64, H, W\] with H\*W = 64, got shape \(2, 64, 8, 4\) \(H\*W = 32\)"):
        module(torch.randn(2, 64, 8, 4))
    with pytest.raises(ValueError, match=r"got shape \(2, 32, 8, 8\)"):
        module(torch.randn(2, 32, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(64, 8, 8\)"):
        module(torch.randn(64, 8, 8))


def test_constructor_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="at least one of use_spatial and use_channel"):
        RGAModule(64, 64, use_spatial=False, use_channel=False)
    with pytest.raises(ValueError, match="down_ratio must be >= 1"):
        RGAModule(64, 48, spa_ratio=8, down_ratio=8)  # (1 + 6) // 8 == 0
    with pytest.raises(ValueError, match="unknown backend 'fastest'"):
        RGAModule(64, 64, backend="fastest")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
def test_torch_compile_fullgraph_training_step(backend):
    if backend not in fast_backends("cpu") + ["reference"]:
        pytest.skip(f"backend {backend} is not usable here")
    torch.manual_seed(0)
    eager = _randomised(RGAModule(32, 48, True, True, 4, 4, 2, backend=backend))
    compiled_module = RGAModule(32, 48, True, True, 4, 4, 2, backend=backend)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True)
    x, grad = torch.randn(2, 32, 8, 6), torch.randn(2, 32, 8, 6)
    expected, got = _run(eager, x, grad), _run(compiled, x, grad)
    assert_relative(got[0], expected[0], 1e-5, "output")
    assert_relative(got[1], expected[1], 1e-4, "grad of the input")
    for name, value in compiled_module.named_buffers():
        assert_relative(value, expected[3][name], 1e-5, name)
    eager.eval()
    compiled_module.eval()
    assert_relative(compiled(x), eager(x), 1e-5, "eval output")
