"""The CUDA device kernels of csrc/cuda/ (relation_stack's tiled forward, ha_soft_gate's
forward and backward), compiled from their own headers against the CPU emulation
(emulation.h) and run on CPU tensors, against the CPU kernels of rga_ops.

Every emulated kernel runs with torch's uninitialised memory filled with NaN, so an output
element a kernel fails to write shows. relation_stack is compared bitwise in every dtype on
inputs whose products and sums are exact in float32 (multiples of 1/8): then the summation
order cannot matter, and any difference is an indexing error. The gate is compared bitwise
where the arithmetic is the same (its float64 forward and dx); elsewhere the exponential
(the CPU kernels' polynomial against the C library's) and the summation order differ, and the
tolerances are a few units in the last place of the dtype."""

from __future__ import annotations

import contextlib
import re

import pytest
import torch

import rga_ops  # noqa: F401  (registers torch.ops.rga_ops, the CPU kernels compared with)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Relative to the largest magnitude of the CPU kernel's result.
TOLERANCE = {torch.float64: 1e-13, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# The gate forward's elements per 16-byte vector.
VECTOR = {torch.float64: 2, torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}
# How the kernels' template arguments read in the launch log.
CXX_TYPE = {torch.float64: "double, double", torch.float32: "float, float", torch.float16: "c10::Half, float",
            torch.bfloat16: "c10::BFloat16, float"}


@contextlib.contextmanager
def poisoned_empty():
    """at::empty fills NaN (torch's deterministic mode), restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]


@contextlib.contextmanager
def launch_limits(emulated, max_grid_z=65535, max_index32=2**31 - 1):
    """The emulated launcher's gridDim.z cap and 32-bit index limit, restored afterwards."""
    previous = emulated.set_launch_limits(max_grid_z, max_index32)
    try:
        yield
    finally:
        emulated.set_launch_limits(*previous)


def launches(emulated, call):
    """call()'s result under poisoned memory, and the launches it made."""
    emulated.take_launch_log()
    with poisoned_empty():
        result = call()
    return result, emulated.take_launch_log()


def assert_close(actual, expected, dtype, what):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert not actual.isnan().any(), f"{what}: unwritten (NaN) elements"
    scale = expected.double().abs().max().item()
    error = (actual.double() - expected.double()).abs().max().item() / max(scale, 1e-30)
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]:g}"


def assert_equal(actual, expected, what):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert not actual.isnan().any(), f"{what}: unwritten (NaN) elements"
    differ = (actual != expected).sum().item()
    assert differ == 0, f"{what}: {differ} of {actual.numel()} elements differ"


def eighths(*shape, dtype, seed):
    """Multiples of 1/8 in [-2, 2]: exact in every dtype, and so are their products and sums here."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-16, 17, shape, generator=g) / 8).to(dtype)


# ---- the emulator itself ------------------------------------------------------------------------


@pytest.mark.parametrize("lane_mask", [1, 2, 4, 8, 16])
def test_xor_shuffle_exchanges_within_each_warp(emulated, lane_mask):
    values = torch.arange(256) * 7 + 3
    lanes = torch.arange(256)
    expected = values[(lanes // 32) * 32 + (lanes % 32 ^ lane_mask)]
    assert torch.equal(emulated.xor_shuffle(values, lane_mask), expected)


@pytest.mark.parametrize("warps", [1, 3, 8])
def test_block_sum_with_shuffles_and_syncthreads(emulated, warps):
    """Several blocks in turn (the shared memory reused), warps beyond `warps` returning at once
    (__syncthreads must not wait for them), a partial last block."""
    values = torch.randint(-1000, 1000, (32 * warps * 5 - 17,)).double()
    expected = torch.nn.functional.pad(values, (0, 17)).view(5, -1).sum(1)
    assert torch.equal(emulated.block_sum(values, warps), expected)


def test_poisoned_empty_fills_nan():
    with poisoned_empty():
        assert torch.empty(16).isnan().all()


# ---- relation_stack -------------------------------------------------------------------------------

# (B, C', N): N on both sides of the 64-wide tile edges, C' across the 16-channel chunks.
STACK_SHAPES = [(1, 1, 1), (2, 15, 63), (1, 16, 64), (3, 17, 65), (1, 40, 130), (2, 1, 130), (1, 40, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", STACK_SHAPES, ids=str)
def test_relation_stack_is_exact(emulated, dtype, shape):
    theta, phi = eighths(*shape, dtype=dtype, seed=1), eighths(*shape, dtype=dtype, seed=2)
    out, log = launches(emulated, lambda: emulated.relation_stack(theta, phi))
    assert_equal(out, torch.ops.rga_ops.relation_stack(theta, phi), "J")
    tiles = (shape[2] + 63) // 64
    assert log == [f"rga_ops::cuda::relation_stack::relation_stack_kernel<{CXX_TYPE[dtype]}>"
                   f"<<<({tiles}, {tiles}, {shape[0]}), (256, 1, 1)>>>"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_relation_stack_on_normal_inputs(emulated, dtype):
    g = torch.Generator().manual_seed(3)
    theta, phi = (torch.randn(2, 40, 70, generator=g).to(dtype) for _ in range(2))
    out, _ = launches(emulated, lambda: emulated.relation_stack(theta, phi))
    assert_close(out, torch.ops.rga_ops.relation_stack(theta, phi), dtype, "J")


def test_relation_stack_of_strided_inputs(emulated):
    """Transposed, sliced, with a storage offset: the launch makes them contiguous first."""
    base = eighths(2, 70, 21, dtype=torch.float32, seed=4)
    theta, phi = base[:, 1:66, 2:19].transpose(1, 2), base[:, 3:68, 1:18].transpose(1, 2)
    out, _ = launches(emulated, lambda: emulated.relation_stack(theta, phi))
    assert_equal(out, torch.ops.rga_ops.relation_stack(theta, phi), "J")


def test_relation_stack_strides_over_batch_items_beyond_the_grid(emulated):
    theta, phi = eighths(5, 17, 65, dtype=torch.float32, seed=5), eighths(5, 17, 65, dtype=torch.float32, seed=6)
    with launch_limits(emulated, max_grid_z=2):
        out, log = launches(emulated, lambda: emulated.relation_stack(theta, phi))
    assert_equal(out, torch.ops.rga_ops.relation_stack(theta, phi), "J")
    assert log[0].endswith("<<<(2, 2, 2), (256, 1, 1)>>>")


def test_relation_stack_checks_its_inputs(emulated):
    t = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"rga_ops::relation_stack: phi must have the shape of theta"):
        emulated.relation_stack(t, t[:, :2])


# ---- ha_soft_gate ---------------------------------------------------------------------------------


def gate_inputs(b, c, h, w, dtype, seed=0):
    """x, s, alpha, beta as ha_soft_gate gets them: alpha and beta in float32 for half/bfloat16;
    gates on both sides of z = 0."""
    g = torch.Generator().manual_seed(seed)
    coefficient_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x = torch.randn(b, c, h, w, generator=g).to(dtype)
    s = (torch.rand(b, 1, h, w, generator=g) * 2).to(dtype)
    alpha = torch.randn(b, c, generator=g).to(coefficient_dtype)
    beta = (torch.randn(c, generator=g) * 0.5).to(coefficient_dtype)
    return x, s, alpha, beta


def forward_kernel(dtype, vector, index):
    return f"rga_ops::cuda::ha_soft_gate::gate_forward_kernel<{CXX_TYPE[dtype]}, {vector}, {index}>"


def check_forward(emulated, x, s, alpha, beta):
    """The emulated forward against the CPU kernel; returns the launched kernel's name and grid."""
    dtype = x.dtype
    out, log = launches(emulated, lambda: emulated.ha_soft_gate(x, s, alpha, beta))
    expected = torch.ops.rga_ops.ha_soft_gate(x, s, alpha, beta)
    if dtype == torch.float64:
        assert_equal(out, expected, "out")
    else:
        assert_close(out, expected, dtype, "out")
    assert len(log) == 1
    return log[0]


# (B, C, H, W): H*W = 24 (a multiple of 8: 16-byte vectors in every dtype), 12 (of 4: vectors for
# float32 and float64, single elements for half), 15 (odd: single elements), 6 (of 2: vectors for
# float64 only); (3, 37, 9, 8): several blocks and a partial one.
GATE_FORWARD_SHAPES = [(1, 1, 4, 6), (3, 5, 2, 6), (2, 7, 3, 5), (1, 40, 2, 3), (3, 37, 9, 8)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GATE_FORWARD_SHAPES, ids=str)
def test_gate_forward(emulated, dtype, shape):
    launched = check_forward(emulated, *gate_inputs(*shape, dtype))
    positions, vector = shape[2] * shape[3], VECTOR[dtype]
    k = vector if positions % vector == 0 else 1
    blocks = -(-torch.Size(shape).numel() // k // 1024)
    assert launched == forward_kernel(dtype, k, "unsigned int") + f"<<<({blocks}, 1, 1), (256, 1, 1)>>>"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("misaligned", ["x", "s"])
def test_gate_forward_of_a_misaligned_tensor_takes_single_elements(emulated, dtype, misaligned):
    """H*W = 24 would take 16-byte vectors; a tensor one element past an aligned address cannot."""
    inputs = dict(zip("x s alpha beta".split(), gate_inputs(2, 5, 4, 6, dtype)))
    t = inputs[misaligned]
    shifted = torch.empty(t.numel() + 1, dtype=dtype)[1:].view(t.shape).copy_(t)
    assert shifted.data_ptr() % 16 != 0
    inputs[misaligned] = shifted
    assert check_forward(emulated, *inputs.values()).startswith(forward_kernel(dtype, 1, "unsigned int"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gate_forward_of_channels_last_x(emulated, dtype):
    x, s, alpha, beta = gate_inputs(2, 6, 4, 4, dtype)
    launched = check_forward(emulated, x.to(memory_format=torch.channels_last), s, alpha, beta)
    assert launched.startswith(forward_kernel(dtype, VECTOR[dtype], "unsigned int"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 4, 6), (2, 7, 3, 5)], ids=str)
def test_gate_forward_with_64_bit_indices(emulated, dtype, shape):
    """The 64-bit instantiation, as beyond 2^31 vectors, once the launcher's limit is lowered."""
    with launch_limits(emulated, max_index32=10):
        launched = check_forward(emulated, *gate_inputs(*shape, dtype))
    k = VECTOR[dtype] if shape[2] * shape[3] % VECTOR[dtype] == 0 else 1
    assert launched.startswith(forward_kernel(dtype, k, "long"))


def test_gate_forward_checks_its_inputs(emulated):
    x, s, alpha, beta = gate_inputs(2, 4, 3, 3, torch.float32)
    with pytest.raises(ValueError, match=re.escape("rga_ops::ha_soft_gate: beta must be [C] = [4]")):
        emulated.ha_soft_gate(x, s, alpha, beta[:3])


def check_backward(emulated, shape, dtype, max_grid_z=65535):
    """The emulated backward against the CPU kernel; returns the launches."""
    x, s, alpha, beta = gate_inputs(*shape, dtype, seed=7)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(8)).to(dtype)
    with launch_limits(emulated, max_grid_z=max_grid_z):
        results, log = launches(emulated, lambda: emulated.ha_soft_gate_backward(grad, x, s, alpha, beta))
    expected = torch.ops.rga_ops.ha_soft_gate_backward(grad, x, s, alpha, beta)
    for name, actual, wanted in zip(("dx", "ds", "dalpha", "dbeta"), results, expected):
        if name == "dx" and dtype == torch.float64:
            assert_equal(actual, wanted, name)
        else:
            assert_close(actual, wanted, dtype, name)
    return log


# (B, C, H, W): positions on both sides of the 128-position tiles (1, 15, 127, 128, 129, 135), channels
# on both sides of the 32-channel tiles (1, 7, 32, 33, 40) and of the 8 warps (C = 7).
GATE_BACKWARD_SHAPES = [(1, 1, 1, 1), (2, 7, 3, 5), (1, 32, 1, 127), (1, 33, 2, 64), (3, 5, 129, 1),
                        (1, 40, 15, 9)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GATE_BACKWARD_SHAPES, ids=str)
def test_gate_backward(emulated, dtype, shape):
    log = check_backward(emulated, shape, dtype)
    b, c, positions = shape[0], shape[1], shape[2] * shape[3]
    grid = f"<<<({-(-positions // 128)}, {-(-c // 32)}, {b}), (256, 1, 1)>>>"
    assert log == [f"rga_ops::cuda::ha_soft_gate::gate_backward_kernel<{CXX_TYPE[dtype]}>{grid}"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_gate_backward_strides_over_batch_items_beyond_the_grid(emulated, dtype):
    log = check_backward(emulated, (5, 9, 2, 5), dtype, max_grid_z=2)
    assert log[0].endswith("<<<(1, 1, 2), (256, 1, 1)>>>")


def test_gate_backward_of_strided_inputs(emulated):
    x, s, alpha, beta = gate_inputs(2, 6, 5, 4, torch.float32, seed=9)
    grad = torch.randn(2, 4, 5, 6).transpose(1, 3)
    x = x.to(memory_format=torch.channels_last)
    s = torch.empty(s.numel() + 1)[1:].view(s.shape).copy_(s)
    results, _ = launches(emulated, lambda: emulated.ha_soft_gate_backward(grad, x, s, alpha, beta))
    expected = torch.ops.rga_ops.ha_soft_gate_backward(grad, x, s, alpha, beta)
    for name, actual, wanted in zip(("dx", "ds", "dalpha", "dbeta"), results, expected):
        assert_close(actual, wanted, torch.float32, name)


def test_gate_backward_checks_its_inputs(emulated):
    x, s, alpha, beta = gate_inputs(2, 4, 3, 3, torch.float32)
    with pytest.raises(ValueError, match=re.escape("rga_ops::ha_soft_gate_backward: grad must have shape")):
        emulated.ha_soft_gate_backward(x[:1], x, s, alpha, beta)
