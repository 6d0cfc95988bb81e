import pytest
import torch

from rga_ops import testing
from rga_ops.nn import RGAModule
from rga_ops.reference import ReferenceRGAModule
from rga_ops.testing import BRANCHES, STAGES, randomise_batch_norms, training_step
from tests.conftest import COMPILED_BACKEND, DEVICES, assert_relative, fast_backends, on_gpu, requires_cuda


def _assert_all_within(errors: dict[str, dict[str, float]], tol_out: float, tol_grad: float | None) -> None:
    for backend, errs in errors.items():
        for what, err in errs.items():
            if what.startswith("grad of "):
                if tol_grad is not None:
                    assert err <= tol_grad, f"{backend} {what}: relative error {err:.3g} > {tol_grad:g}"
            else:
                assert err <= tol_out, f"{backend} {what}: relative error {err:.3g} > {tol_out:g}"


def compare_with_reference(c, h, w, branch, training, dtype, batch, tol_out, tol_grad, device="cpu", **kwargs):
    """Every fast backend of `device` against ReferenceRGAModule in the same state, on `device`."""
    backends = fast_backends(device)
    errors = testing.compare_with_reference(c, h, w, branch, training, dtype, batch, backends, device=device, **kwargs)
    assert set(errors) == set(backends)
    _assert_all_within(errors, tol_out, tol_grad)


stage_ids = [f"{c}x{h}x{w}" for c, h, w in STAGES]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("branch", list(BRANCHES))
@pytest.mark.parametrize("stage", STAGES, ids=stage_ids)
def test_stage_shapes_float64_outputs_statistics_and_gradients(stage, branch, training, device):
    compare_with_reference(*stage, branch, training, torch.float64, 2, 1e-6, 1e-6, device)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("branch", list(BRANCHES))
@pytest.mark.parametrize("stage", STAGES, ids=stage_ids)
def test_stage_shapes_float32_outputs_and_statistics(stage, branch, training, device):
    compare_with_reference(*stage, branch, training, torch.float32, 2, 1e-4, None, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("branch", list(BRANCHES))
@pytest.mark.parametrize("shape", [(1, 64, 8, 8), (3, 40, 5, 13), (2, 16, 9, 7)], ids=str)
def test_small_odd_shapes_and_batch_one(shape, branch, training, device):
    b, c, h, w = shape
    compare_with_reference(c, h, w, branch, training, torch.float64, b, 1e-10, 1e-8, device, ratios=(4, 4, 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("branch", ["rgas", "rgasc"])
@pytest.mark.parametrize("shape", [(3, 1024, 1, 1), (2, 2048, 2, 1)], ids=str)
def test_tiny_maps_with_many_channels(shape, branch, training, device):
    # N <= C / 1024: the spatial embeddings run as one GEMM over the batch's positions
    # (RGA-Net's last stage at 32x16 is 2048 x 2 x 1). Gradients to 1e-7: BatchNorm over 2-3 values
    # per channel is ill-conditioned, the torch backend's own rounding reaches 1e-8 there.
    from rga_ops.backends import module_choices

    b, c, h, w = shape
    assert h * w <= c * module_choices(torch.device(device).type).embedding_gemm_max_positions_per_channel
    compare_with_reference(c, h, w, branch, training, torch.float64, b, 1e-10, 1e-7, device, ratios=(8, 1, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("branch", list(BRANCHES))
def test_channels_last_input(branch, device):
    compare_with_reference(32, 8, 6, branch, True, torch.float64, 2, 1e-10, 1e-8, device, ratios=(4, 4, 2),
                           memory_format=torch.channels_last)


def _cumulative_average(module: torch.nn.Module) -> torch.nn.Module:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    return module


@pytest.mark.parametrize("device", DEVICES)
def test_momentum_none_and_several_steps_keep_the_same_running_statistics(device):
    torch.manual_seed(0)
    args = (32, 48, True, True, 4, 4, 2)
    initial = ReferenceRGAModule(*args).double().state_dict()
    inputs = [torch.randn(2, 32, 8, 6, dtype=torch.float64, device=device) for _ in range(3)]
    reference = _cumulative_average(ReferenceRGAModule(*args).to(device, torch.float64))
    reference.load_state_dict(initial)
    for x in inputs:
        reference(x)
    for backend in fast_backends(device):
        module = _cumulative_average(RGAModule(*args, backend=backend).to(device, torch.float64))
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
    ours, ref = RGAModule(64, 64, backend="torch"), randomise_batch_norms(ReferenceRGAModule(64, 64))
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
@pytest.mark.parametrize("device,backend", [("cpu", "reference"), ("cpu", "torch"), ("cpu", "cpp"),
                                            on_gpu("cuda", "reference"), on_gpu("cuda", "torch"),
                                            on_gpu("cuda", "cuda")])
def test_torch_compile_fullgraph_training_step(device, backend):
    if backend not in fast_backends(device) + ["reference"]:
        pytest.skip(f"backend {backend} is not usable here")
    torch.manual_seed(0)
    eager = randomise_batch_norms(RGAModule(32, 48, True, True, 4, 4, 2, backend=backend)).to(device)
    compiled_module = RGAModule(32, 48, True, True, 4, 4, 2, backend=backend).to(device)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, fullgraph=True)
    x, grad = torch.randn(2, 32, 8, 6, device=device), torch.randn(2, 32, 8, 6, device=device)
    expected, got = training_step(eager, x, grad), training_step(compiled, x, grad)
    assert_relative(got["output"], expected["output"], 1e-5, "output")
    assert_relative(got["grad of the input"], expected["grad of the input"], 1e-4, "grad of the input")
    for name, value in compiled_module.named_buffers():
        assert_relative(value, expected[name], 1e-5, name)
    for name, value in compiled_module.named_parameters():
        assert_relative(value.grad, expected[f"grad of {name}"], 1e-3, f"grad of {name}")
    eager.eval()
    compiled_module.eval()
    assert_relative(compiled(x), eager(x), 1e-5, "eval output")


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_updates_the_fused_heads_running_statistics(device):
    """A module whose spatial head is large enough for the fused batch_norm_relu_conv1x1 (32x32
    positions: a [128, 1024] relation per item), compiled: its output and its BatchNorms' running
    statistics as in eager mode."""
    backend = COMPILED_BACKEND[device]
    if backend not in fast_backends(device):
        pytest.skip(f"backend {backend} is not usable here")
    torch.manual_seed(0)
    eager = randomise_batch_norms(RGAModule(16, 32 * 32, True, False, 4, 8, 8, backend=backend)).to(device)
    module = RGAModule(16, 32 * 32, True, False, 4, 8, 8, backend=backend).to(device)
    module.load_state_dict(eager.state_dict())
    # dynamic=False: recompiled with automatic dynamic shapes (after another RGAModule's compile
    # in the same process), inductor fails on this module with every backend, "torch" included
    # ("cannot determine truth value of Relational", torch 2.14.1).
    compiled = torch.compile(module, fullgraph=True, dynamic=False)
    x, grad = torch.randn(2, 16, 32, 32, device=device), torch.randn(2, 16, 32, 32, device=device)
    expected, got = training_step(eager, x, grad), training_step(compiled, x, grad)
    assert_relative(got["output"], expected["output"], 1e-5, "output")
    for name, value in module.named_buffers():
        assert_relative(value, expected[name], 1e-5, name)


@requires_cuda
@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cuda_graphs_on_a_side_stream(training):
    """RGAModule(256, 2048) (RGA-Net's first stage, its large-activation attention head included)
    with backend="cuda" under torch.compile(mode="reduce-overhead") (CUDA graphs where the step
    allows them), run on a stream other than the default one: the eager results, step after step."""
    torch.manual_seed(0)
    eager = randomise_batch_norms(RGAModule(256, 64 * 32, backend="cuda")).cuda().train(training)
    module = RGAModule(256, 64 * 32, backend="cuda").cuda().train(training)
    module.load_state_dict(eager.state_dict())
    compiled = torch.compile(module, mode="reduce-overhead")
    inputs = [torch.randn(4, 256, 64, 32, device="cuda") for _ in range(3)]
    grads = [torch.randn(4, 256, 64, 32, device="cuda") for _ in range(3)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for x, grad in zip(inputs, grads):
            expected, got = training_step(eager, x, grad), training_step(compiled, x, grad)
            assert_relative(got["output"], expected["output"], 1e-4, "output")
            assert_relative(got["grad of the input"], expected["grad of the input"], 1e-3, "grad of the input")
            for name, value in module.named_buffers():
                assert_relative(value, expected[name], 1e-4, name)
            eager.zero_grad()
            module.zero_grad()
    torch.cuda.current_stream().wait_stream(stream)
