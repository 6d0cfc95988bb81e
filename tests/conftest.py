"""Shared test configuration: refuse to run against an rga_ops whose compiled
extension is missing (which would otherwise turn every cpp test into a skip),
devices present, the `gpu` marker of every test that runs on a GPU, fresh memory
poisoned in the kernels' tests, and the relative-error measure used throughout.
Without a GPU the Triton kernels run in triton's interpreter, which must be chosen
before rga_ops (and with it triton) is imported; only tests/triton/ runs them there."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# cuBLAS is deterministic with a fixed workspace, which deterministic mode (below) asks for.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import rga_ops  # noqa: E402


def pytest_configure(config):
    status = rga_ops.backends()["cpp"]
    if not status.usable and os.environ.get("RGA_OPS_ALLOW_NO_EXTENSION") != "1":
        raise pytest.UsageError(
            f"the rga_ops under test ({os.path.dirname(rga_ops.__file__)}) cannot use its compiled "
            f"extension: {status.reason}. Set RGA_OPS_ALLOW_NO_EXTENSION=1 to test the pure-PyTorch parts only."
        )


HAS_GPU = torch.cuda.is_available()


def needs_gpu(usable: bool = HAS_GPU, reason: str = "no GPU here"):
    """Decorator of a test that runs on a GPU: marks it `gpu` (`pytest -m gpu` runs every such
    test) and skips it, saying why, where `usable` is false."""
    skip = pytest.mark.skipif(not usable, reason=reason)
    return lambda test: pytest.mark.gpu(skip(test))


GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no GPU here")]


def on_gpu(*values, id: str | None = None):
    """A pytest parameter set that runs on a GPU (marked and skipped as needs_gpu does)."""
    return pytest.param(*values, marks=GPU_MARKS, id=id)


# Parameters of the device tests: "cuda" runs (marked gpu) where a GPU is visible, else is skipped.
DEVICES = ["cpu", on_gpu("cuda")]

# The backend of our compiled extension on each device.
COMPILED_BACKEND = {"cpu": "cpp", "cuda": "cuda"}

_CUDA = rga_ops.backends()["cuda"]
# Tests of our CUDA kernels: they run where the cuda backend can (a GPU and an extension built
# with RGA_OPS_CUDA=1) and are skipped, saying why, everywhere else.
requires_cuda = needs_gpu("cuda" in _CUDA.devices, f"the cuda backend cannot run here: {_CUDA.reason}")


def pytest_collection_modifyitems(config, items):
    """Every test that runs something on CUDA must carry the gpu marker (so that `pytest -m gpu`
    runs them all): a test parametrised with the device or backend "cuda" without it is an error."""
    unmarked = [item.nodeid for item in items
                if item.get_closest_marker("gpu") is None and hasattr(item, "callspec")
                and any(str(value) == "cuda" or getattr(value, "type", None) == "cuda"
                        for value in item.callspec.params.values())]
    if unmarked:
        raise pytest.UsageError("tests parametrised with cuda but not marked gpu (use tests.conftest.on_gpu or "
                                "needs_gpu): " + ", ".join(unmarked))


# The folders whose tests run our kernels: there every tensor that torch.empty (or at::empty in
# C++) hands out is filled with NaN first, so that an output element a kernel fails to write
# cannot pass for the right answer (the caching allocator may otherwise return the very block
# that held the reference's result a moment ago). GPU tests elsewhere are poisoned too.
_KERNEL_TEST_FOLDERS = {"ops", "nn", "triton", "cuda_emulation"}


@pytest.fixture(autouse=True)
def _poison_fresh_memory(request):
    folder = request.node.path.parent.name
    if folder not in _KERNEL_TEST_FOLDERS and request.node.get_closest_marker("gpu") is None:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]


@pytest.fixture(autouse=True)
def _float32_is_float32():
    """No TF32 in cuBLAS or cuDNN while a test runs (PyTorch lets cuDNN convolutions use it by
    default): the float32 tolerances assume float32 arithmetic, in our kernels and in the reference."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


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
