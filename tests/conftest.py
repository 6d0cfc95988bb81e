"""Shared test configuration: refuse to run against an rga_ops whose compiled
extension is missing (which would otherwise turn every cpp test into a skip),
devices present, and the relative-error measure used throughout. Without a GPU the
Triton kernels run in triton's interpreter, which must be chosen before rga_ops
(and with it triton) is imported; only tests/triton/ runs them there."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import rga_ops  # noqa: E402


def pytest_configure(config):
    status = rga_ops.backends()["cpp"]
    if not status.usable and os.environ.get("RGA_OPS_ALLOW_NO_EXTENSION") != "1":
        raise pytest.UsageError(
            f"the rga_ops under test ({os.path.dirname(rga_ops.__file__)}) cannot use its compiled "
            f"extension: {status.reason}. Set RGA_OPS_ALLOW_NO_EXTENSION=1 to test the pure-PyTorch parts only."
        )


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def fast_backends(device: str) -> list[str]:
    """Our backends that can run on `device` here (everything but the reference; triton on the
    CPU, i.e. in its interpreter, only in the small-shape tests of tests/triton/)."""
    return [name for name, s in rga_ops.backends().items()
            if name != "reference" and device in s.devices and not (name == "triton" and device == "cpu")]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zero)."""
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = relative_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"
