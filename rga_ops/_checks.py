"""Input checks of every rga_ops operator: the Python twin of csrc/checks.h, word for word, so
that a bad input gets the same message from every backend (the wrappers, the fake kernels, the
Triton launches and the C++ kernels). Each message names the op, the argument, what was
expected and what was given; shapes are written [2, 3, 5] and dtypes torch.float32, as the C++
kernels write them.

A leaf module: it imports only torch. Symbolic conditions go through torch._check_value /
torch._check_type, so the fake kernels run the same checks under torch.compile and torch.export."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def require(condition, message: Callable[[], str], error: type[Exception] = ValueError) -> None:
    """Raises `error` (ValueError or TypeError) with message() unless condition holds. The
    message is formatted only on failure; a symbolic condition (dynamic shapes in a fake kernel)
    goes to torch._check_*, with the message formatted first (torch.compile accepts only a
    message closure over constants)."""
    if isinstance(condition, bool):
        if not condition:
            raise error(message())
        return
    text = message()
    (torch._check_type if error is TypeError else torch._check_value)(condition, lambda: text)


def shape(t_or_sizes) -> str:
    """'[2, 3, 5]': a tensor's shape (or a sequence of sizes) as the C++ kernels print it."""
    sizes = t_or_sizes.shape if isinstance(t_or_sizes, torch.Tensor) else t_or_sizes
    return "[" + ", ".join(str(s) for s in sizes) + "]"


def check_tensor(op: str, name: str, t) -> None:
    require(isinstance(t, torch.Tensor), lambda: f"{op}: {name} must be a tensor, got {type(t).__name__}", TypeError)


def check_float_tensor(op: str, name: str, t: torch.Tensor) -> None:
    require(t.is_floating_point(), lambda: f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}",
            TypeError)


def check_dim(op: str, name: str, t: torch.Tensor, dim: int, layout: str) -> None:
    require(t.dim() == dim, lambda: f"{op}: {name} must have {dim} dimensions {layout}, got shape {shape(t)}")


def check_same_dtype(op: str, name: str, t: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    require(t.dtype == like.dtype,
            lambda: f"{op}: {name} must have the dtype of {like_name} ({like.dtype}), got {t.dtype}", TypeError)


def check_same_device(op: str, name: str, t: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    require(t.device == like.device,
            lambda: f"{op}: {name} must be on the device of {like_name} ({like.device}), got {t.device}")


def check_embeddings(op: str, theta: torch.Tensor, phi: torch.Tensor) -> None:
    """theta and phi: the two embeddings [B, C', N] of one relation branch."""
    for name, t in (("theta", theta), ("phi", phi)):
        check_tensor(op, name, t)
    check_dim(op, "theta", theta, 3, "[B, C', N]")
    check_dim(op, "phi", phi, 3, "[B, C', N]")
    check_float_tensor(op, "theta", theta)
    check_same_dtype(op, "phi", phi, "theta", theta)
    check_same_device(op, "phi", phi, "theta", theta)
    require(phi.shape == theta.shape,
            lambda: f"{op}: phi must have the shape of theta [B, C', N] = {shape(theta)}, got {shape(phi)}")
    require(theta.shape[1] > 0 and theta.shape[2] > 0,
            lambda: f"{op}: theta must have C' > 0 and N > 0, got shape {shape(theta)}")


def check_projection_weight(op: str, theta: torch.Tensor, weight: torch.Tensor) -> None:
    """weight: the 1x1 conv of the stacked relation, [K, 2N] (a [K, 2N, 1, 1] conv weight viewed 2-D)."""
    check_tensor(op, "weight", weight)
    check_dim(op, "weight", weight, 2, "[K, 2N]")
    check_same_dtype(op, "weight", weight, "theta", theta)
    check_same_device(op, "weight", weight, "theta", theta)
    n = theta.shape[2]
    require(weight.shape[1] == 2 * n,
            lambda: f"{op}: weight must be [K, 2N] = [K, {2 * n}] for N = {n}, got shape {shape(weight)}")
    require(weight.shape[0] > 0, lambda: f"{op}: weight must have K > 0 rows, got shape {shape(weight)}")


def check_grad(op: str, grad: torch.Tensor, like: torch.Tensor, expected_shape: Sequence[int]) -> None:
    require(tuple(grad.shape) == tuple(expected_shape),
            lambda: f"{op}: grad must have shape {shape(expected_shape)}, got {shape(grad)}")
    require(grad.dtype == like.dtype, lambda: f"{op}: grad must have dtype {like.dtype}, got {grad.dtype}", TypeError)
    require(grad.device == like.device, lambda: f"{op}: grad must be on device {like.device}, got {grad.device}")


def check_coefficients(op: str, coefficients: torch.Tensor, theta: torch.Tensor, weight: torch.Tensor) -> None:
    """relation_project's saved coefficients [A_b | B_b]^T, [B, 2C', K]."""
    b, c, k = theta.shape[0], theta.shape[1], weight.shape[0]
    require(tuple(coefficients.shape) == (b, 2 * c, k),
            lambda: f"{op}: coefficients must have shape [{b}, {2 * c}, {k}], got {shape(coefficients)}")
    check_same_device(op, "coefficients", coefficients, "theta", theta)


def check_soft_gate_inputs(op: str, x: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor,
                           beta: torch.Tensor) -> None:
    """ha_soft_gate: x [B, C, H, W], s [B, 1, H, W], alpha [B, C], beta [C]."""
    check_dim(op, "x", x, 4, "[B, C, H, W]")
    check_float_tensor(op, "x", x)
    b, c, h, w = x.shape
    require(s.dim() == 4 and tuple(s.shape) == (b, 1, h, w),
            lambda: f"{op}: s must be [B, 1, H, W] = [{b}, 1, {h}, {w}], got shape {shape(s)}")
    require(alpha.dim() == 2 and tuple(alpha.shape) == (b, c),
            lambda: f"{op}: alpha must be [B, C] = [{b}, {c}], got shape {shape(alpha)}")
    require(beta.dim() == 1 and beta.shape[0] == c, lambda: f"{op}: beta must be [C] = [{c}], got shape {shape(beta)}")
    check_same_dtype(op, "s", s, "x", x)
    check_same_dtype(op, "beta", beta, "alpha", alpha)
    require(alpha.dtype in (x.dtype, torch.float32),
            lambda: f"{op}: alpha must have the dtype of x ({x.dtype}) or float32, got {alpha.dtype}", TypeError)
    for name, t in (("s", s), ("alpha", alpha), ("beta", beta)):
        check_same_device(op, name, t, "x", x)


def check_soft_gate_arguments(op: str, x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                              running_var, training: bool) -> None:
    """The arguments of the rga_ops.ha_soft_gate function, from which it computes alpha and beta:
    x [B, C, H, W], s [B, 1, H, W], c [B, C], conv_weight [C, C], conv_bias and the BatchNorm's [C]."""
    check_tensor(op, "x", x)
    check_dim(op, "x", x, 4, "[B, C, H, W]")
    check_float_tensor(op, "x", x)
    b, ch, h, w = x.shape
    expected = {"s": (s, (b, 1, h, w), "[B, 1, H, W]"), "c": (c, (b, ch), "[B, C]"),
                "conv_weight": (conv_weight, (ch, ch), "[C, C]"), "conv_bias": (conv_bias, (ch,), "[C]")}
    for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None:
            expected[name] = (t, (ch,), "[C]")
    for name, (t, sizes, layout) in expected.items():
        check_tensor(op, name, t)
        require(tuple(t.shape) == sizes, lambda: f"{op}: {name} must be {layout} = {shape(sizes)}, got shape {shape(t)}")
        check_same_device(op, name, t, "x", x)
        check_float_tensor(op, name, t)
    check_same_dtype(op, "s", s, "x", x)
    require(training or (running_mean is not None and running_var is not None),
            lambda: f"{op}: evaluation (training=False) needs running_mean and running_var")


def check_batch_norm_relu_conv_inputs(op: str, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                                      bn_weight: torch.Tensor | None, bn_bias: torch.Tensor | None,
                                      conv_weight: torch.Tensor) -> None:
    """batch_norm_relu_conv1x1: x [B, K, N], mean/var/bn_weight/bn_bias [K], conv_weight [H, K]."""
    check_dim(op, "x", x, 3, "[B, K, N]")
    check_float_tensor(op, "x", x)
    k = x.shape[1]
    for name, t in (("mean", mean), ("var", var), ("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        if t is None:
            continue
        require(t.dim() == 1 and t.shape[0] == k, lambda: f"{op}: {name} must be [K] = [{k}], got shape {shape(t)}")
        check_same_device(op, name, t, "x", x)
    require(conv_weight.dim() == 2 and conv_weight.shape[1] == k,
            lambda: f"{op}: conv_weight must be [H, K] with K = {k}, got shape {shape(conv_weight)}")
    check_same_dtype(op, "conv_weight", conv_weight, "x", x)
    check_same_device(op, "conv_weight", conv_weight, "x", x)


def check_backend_device(op: str, t: torch.Tensor, backend: str, devices: tuple[str, ...], reason: str) -> None:
    """For a backend's own operators (e.g. rga_ops_triton::*): t is on a device the backend runs on."""
    require(t.device.type in devices,
            lambda: f"{op}: the {backend} backend runs on {' and '.join(devices) or 'no'} tensors here ({reason}), "
                    f"got a tensor on {t.device}")
