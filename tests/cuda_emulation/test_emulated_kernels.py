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
# By the result's dtype, relative to the largest magnitude of the CPU kernel's result: about one
# unit in the last place for half and bfloat16, a few ulp of float32 sums, and float64 sums.
TOLERANCE = {torch.float64: 1e-13, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
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


def assert_close(actual, expected, what):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert not actual.isnan().any(), f"{what}: unwritten (NaN) elements"
    if actual.numel() == 0:
        return
    scale = expected.double().abs().max().item()
    error = (actual.double() - expected.double()).abs().max().item() / max(scale, 1e-30)
    tolerance = TOLERANCE[actual.dtype]
    assert error <= tolerance, f"{what}: relative error {error:.3g} > {tolerance:g}"


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
    values = torch.randint(-1000, 1000, (32 * warps * 5 - 17,), generator=torch.Generator().manual_seed(0)).double()
    expected = torch.nn.functional.pad(values, (0, 17)).view(5, -1).sum(1)
    assert torch.equal(emulated.block_sum(values, warps), expected)


def test_poisoned_empty_fills_nan():
    with poisoned_empty():
        assert torch.empty(16).isnan().all()


# ---- relation_stack -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels", [1, 15, 16, 17, 40])  # across the 16-channel chunks
@pytest.mark.parametrize("n", [1, 63, 64, 65, 130])  # across the 64-wide tiles
def test_relation_stack_is_exact(emulated, dtype, batch, channels, n):
    theta, phi = (eighths(batch, channels, n, dtype=dtype, seed=seed) for seed in (1, 2))
    out, log = launches(emulated, lambda: emulated.relation_stack(theta, phi))
    assert_equal(out, torch.ops.rga_ops.relation_stack(theta, phi), "J")
    tiles = (n + 63) // 64
    assert log == [f"rga_ops::cuda::relation_stack::relation_stack_kernel<{CXX_TYPE[dtype]}>"
                   f"<<<({tiles}, {tiles}, {batch}), (256, 1, 1)>>>"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_relation_stack_on_normal_inputs(emulated, dtype):
    g = torch.Generator().manual_seed(3)
    theta, phi = (torch.randn(2, 40, 70, generator=g).to(dtype) for _ in range(2))
    out, _ = launches(emulated, lambda: emulated.relation_stack(theta, phi))
    assert_close(out, torch.ops.rga_ops.relation_stack(theta, phi), "J")


def test_relation_stack_of_strided_inputs(emulated):
    """Transposed, sliced, with a storage offset: the launch makes them contiguous first."""
    base = eighths(2, 70, 21, dtype=torch.float32, seed=4)
    theta, phi = base[:, 1:66, 2:19].transpose(1, 2), base[:, 3:68, 1:18].transpose(1, 2)
    out, _ = launches(emulated, lambda: emulated.relation_stack(theta, phi))
    assert_equal(out, torch.ops.rga_ops.relation_stack(theta, phi), "J")


@pytest.mark.parametrize("max_grid_z", [1, 2])
def test_relation_stack_strides_over_batch_items_beyond_the_grid(emulated, max_grid_z):
    theta, phi = (eighths(5, 17, 65, dtype=torch.float32, seed=seed) for seed in (5, 6))
    with launch_limits(emulated, max_grid_z=max_grid_z):
        out, log = launches(emulated, lambda: emulated.relation_stack(theta, phi))
    assert_equal(out, torch.ops.rga_ops.relation_stack(theta, phi), "J")
    assert log == [f"rga_ops::cuda::relation_stack::relation_stack_kernel<float, float>"
                   f"<<<(2, 2, {max_grid_z}), (256, 1, 1)>>>"]


def test_relation_stack_of_an_empty_batch_launches_nothing(emulated):
    theta = torch.randn(0, 3, 5)
    out, log = launches(emulated, lambda: emulated.relation_stack(theta, theta))
    assert out.shape == (0, 10, 5) and log == []


def test_relation_stack_checks_its_inputs(emulated):
    t = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"rga_ops::relation_stack: phi must have the shape of theta"):
        emulated.relation_stack(t, t[:, :2])


# ---- ha_soft_gate ---------------------------------------------------------------------------------


def gate_inputs(b, c, h, w, dtype, seed=0, coefficient_dtype=None):
    """x, s, alpha, beta as ha_soft_gate gets them (alpha and beta in float32 for half and bfloat16
    unless told otherwise), with gates on both sides of z = 0."""
    g = torch.Generator().manual_seed(seed)
    if coefficient_dtype is None:
        coefficient_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x = torch.randn(b, c, h, w, generator=g).to(dtype)
    s = (torch.rand(b, 1, h, w, generator=g) * 2).to(dtype)
    alpha = torch.randn(b, c, generator=g).to(coefficient_dtype)
    beta = (torch.randn(c, generator=g) * 0.5).to(coefficient_dtype)
    return x, s, alpha, beta


def forward_kernel(dtype, vector, index):
    return f"rga_ops::cuda::ha_soft_gate::gate_forward_kernel<{CXX_TYPE[dtype]}, {vector}, {index}>"


def check_forward(emulated, x, s, alpha, beta):
    """The emulated forward against the CPU kernel (bitwise in float64); returns the launches."""
    out, log = launches(emulated, lambda: emulated.ha_soft_gate(x, s, alpha, beta))
    expected = torch.ops.rga_ops.ha_soft_gate(x, s, alpha, beta)
    if x.dtype == torch.float64:
        assert_equal(out, expected, "out")
    else:
        assert_close(out, expected, "out")
    return log


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels", [1, 5, 37])
# H*W = 24 and 72 (multiples of 8: 16-byte vectors in every dtype), 12 (of 4: vectors but for half
# and bfloat16), 6 (of 2: vectors for float64 only), 15 (odd: single elements everywhere).
@pytest.mark.parametrize("hw", [(4, 6), (9, 8), (2, 6), (2, 3), (3, 5)], ids=str)
def test_gate_forward(emulated, dtype, batch, channels, hw):
    log = check_forward(emulated, *gate_inputs(batch, channels, *hw, dtype))
    vector = VECTOR[dtype] if hw[0] * hw[1] % VECTOR[dtype] == 0 else 1
    blocks = -(-batch * channels * hw[0] * hw[1] // vector // 1024)
    assert log == [forward_kernel(dtype, vector, "unsigned int") + f"<<<({blocks}, 1, 1), (256, 1, 1)>>>"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gate_forward_over_several_blocks(emulated, dtype):
    """Blocks of 1024 vectors or elements: 3 to 12 full ones (24576 elements, H*W = 96), 25 with a
    partial last one (24600 elements, H*W = 615)."""
    for shape in [(4, 64, 8, 12), (1, 40, 15, 41)]:
        log = check_forward(emulated, *gate_inputs(*shape, dtype))
        assert len(log) == 1 and "<<<(1, 1, 1)" not in log[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gate_forward_with_coefficients_in_the_dtype_of_x(emulated, dtype):
    check_forward(emulated, *gate_inputs(2, 5, 4, 6, dtype, coefficient_dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("misaligned", ["x", "s"])
def test_gate_forward_of_a_misaligned_tensor_takes_single_elements(emulated, dtype, misaligned):
    """H*W = 24 would take 16-byte vectors; a tensor one element past an aligned address cannot."""
    inputs = dict(zip(("x", "s", "alpha", "beta"), gate_inputs(2, 5, 4, 6, dtype)))
    t = inputs[misaligned]
    inputs[misaligned] = torch.empty(t.numel() + 1, dtype=dtype)[1:].view(t.shape).copy_(t)
    assert inputs[misaligned].data_ptr() % 16 != 0
    log = check_forward(emulated, *inputs.values())
    assert log[0].startswith(forward_kernel(dtype, 1, "unsigned int") + "<<<")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gate_forward_of_channels_last_x(emulated, dtype):
    x, s, alpha, beta = gate_inputs(2, 6, 4, 4, dtype)
    log = check_forward(emulated, x.to(memory_format=torch.channels_last), s, alpha, beta)
    assert log[0].startswith(forward_kernel(dtype, VECTOR[dtype], "unsigned int") + "<<<")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 4, 6), (2, 7, 3, 5), (3, 37, 9, 8)], ids=str)
def test_gate_forward_with_64_bit_indices(emulated, dtype, shape):
    """The 64-bit instantiation, as beyond 2^31 vectors, once the launcher's limit is lowered."""
    with launch_limits(emulated, max_index32=10):
        log = check_forward(emulated, *gate_inputs(*shape, dtype))
    vector = VECTOR[dtype] if shape[2] * shape[3] % VECTOR[dtype] == 0 else 1
    assert log[0].startswith(forward_kernel(dtype, vector, "long") + "<<<")


@pytest.mark.parametrize("shape", [(0, 3, 2, 2), (2, 0, 2, 2), (2, 3, 0, 2)], ids=str)
def test_gate_of_an_empty_tensor_launches_nothing(emulated, shape):
    x, s, alpha, beta = gate_inputs(*shape, torch.float32)
    grad = torch.randn(shape)
    results, log = launches(emulated, lambda: (emulated.ha_soft_gate(x, s, alpha, beta),
                                               *emulated.ha_soft_gate_backward(grad, x, s, alpha, beta)))
    expected = (torch.ops.rga_ops.ha_soft_gate(x, s, alpha, beta),
                *torch.ops.rga_ops.ha_soft_gate_backward(grad, x, s, alpha, beta))
    assert log == []
    for name, actual, wanted in zip(("out", "dx", "ds", "dalpha", "dbeta"), results, expected):
        assert_close(actual, wanted, name)


def test_gate_forward_checks_its_inputs(emulated):
    x, s, alpha, beta = gate_inputs(2, 4, 3, 3, torch.float32)
    with pytest.raises(ValueError, match=re.escape("rga_ops::ha_soft_gate: beta must be [C] = [4]")):
        emulated.ha_soft_gate(x, s, alpha, beta[:3])


def check_backward(emulated, x, s, alpha, beta, grad):
    """The emulated backward against the CPU kernel (dx bitwise in float64); returns the launches."""
    results, log = launches(emulated, lambda: emulated.ha_soft_gate_backward(grad, x, s, alpha, beta))
    expected = torch.ops.rga_ops.ha_soft_gate_backward(grad, x, s, alpha, beta)
    for name, actual, wanted in zip(("dx", "ds", "dalpha", "dbeta"), results, expected):
        if name == "dx" and x.dtype == torch.float64:
            assert_equal(actual, wanted, name)
        else:
            assert_close(actual, wanted, name)
    return log


def backward_inputs(shape, dtype):
    return (*gate_inputs(*shape, dtype, seed=7),
            torch.randn(shape, generator=torch.Generator().manual_seed(8)).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
# Across the 32-channel tiles, and fewer channels than the 8 warps (1, 7).
@pytest.mark.parametrize("channels", [1, 7, 32, 33, 65])
# Across the 128-position tiles, and fewer positions than a warp's 32 lanes (1, 15).
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (1, 127), (2, 64), (3, 43), (10, 30)], ids=str)
def test_gate_backward(emulated, dtype, batch, channels, hw):
    log = check_backward(emulated, *backward_inputs((batch, channels, *hw), dtype))
    grid = f"<<<({-(-hw[0] * hw[1] // 128)}, {-(-channels // 32)}, {batch}), (256, 1, 1)>>>"
    assert log == [f"rga_ops::cuda::ha_soft_gate::gate_backward_kernel<{CXX_TYPE[dtype]}>{grid}"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("max_grid_z", [1, 2])
def test_gate_backward_strides_over_batch_items_beyond_the_grid(emulated, dtype, max_grid_z):
    with launch_limits(emulated, max_grid_z=max_grid_z):
        log = check_backward(emulated, *backward_inputs((5, 40, 3, 50), dtype))
    assert log[0].endswith(f"<<<(2, 2, {max_grid_z}), (256, 1, 1)>>>")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_gate_backward_of_strided_inputs(emulated, dtype):
    """channels_last x, a transposed grad, s one element past an aligned address."""
    x, s, alpha, beta = gate_inputs(2, 6, 5, 4, dtype, seed=9)
    grad = torch.randn(2, 4, 5, 6).to(dtype).transpose(1, 3)
    x = x.to(memory_format=torch.channels_last)
    s = torch.empty(s.numel() + 1, dtype=dtype)[1:].view(s.shape).copy_(s)
    check_backward(emulated, x, s, alpha, beta, grad)


def test_gate_backward_checks_its_inputs(emulated):
    x, s, alpha, beta = gate_inputs(2, 4, 3, 3, torch.float32)
    with pytest.raises(ValueError, match=re.escape("rga_ops::ha_soft_gate_backward: grad must have shape")):
        emulated.ha_soft_gate_backward(x[:1], x, s, alpha, beta)
