"""The CUDA emulation's test extension (tests/cuda_emulation/*.cpp): the device kernels of
csrc/cuda/ compiled with the C++ compiler against emulation.h, built once per session."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SOURCES = ["emulation.cpp", "emulated_ops.cpp"]


@pytest.fixture(scope="session")
def emulated():
    """torch.ops.rga_ops_emulated, once the extension is built (ninja reuses an unchanged build)."""
    from torch.utils import cpp_extension

    import rga_ops

    cpp = rga_ops.backends()["cpp"]
    if not cpp.usable:
        pytest.skip(f"the CPU kernels that the emulated ones are compared with cannot run: {cpp.reason}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler!r} is not on PATH): the emulated CUDA kernels cannot be built")
    build_directory = os.path.join(ROOT, "build", "cuda-emulation")
    os.makedirs(build_directory, exist_ok=True)
    cpp_extension.load(
        name="rga_ops_cuda_emulation",
        sources=[os.path.join(HERE, s) for s in SOURCES],
        extra_include_paths=[os.path.join(ROOT, "csrc")],
        extra_cflags=["-O2"],
        build_directory=build_directory,
        is_python_module=False,
    )
    return torch.ops.rga_ops_emulated
