"""Where the triton backend runs, what it says where it cannot, and that its kernels compile
for a GPU even where none is present."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

import rga_ops
from rga_ops import triton as rga_triton
from rga_ops.triton import _library
from tests.triton.support import STATUS

backends = importlib.import_module("rga_ops.backends")  # the module (rga_ops.backends is the function)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _without_interpreter() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_status_says_where_it_runs():
    status = rga_ops.backends()["triton"]
    assert status.usable == bool(status.devices) and status.reason
    if STATUS.interpreted:
        assert status.devices == ("cpu",) and "interpreter" in status.reason
    elif status.usable:
        assert status.devices == ("cuda",)


def test_auto_never_picks_triton_on_the_cpu(monkeypatch):
    assert backends.resolve_backend("auto", torch.device("cpu"), "relation_project", 10) != "triton"
    monkeypatch.setitem(backends._MEASURED_AUTO, ("cpu", "relation_project"), ((100, "triton"),))
    assert backends.resolve_backend("auto", torch.device("cpu"), "relation_project", 10) == "cpp"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the backend is usable without the interpreter")
def test_without_gpu_or_interpreter_the_backend_is_unusable_and_says_why():
    probe = ("import rga_ops, torch\n"
             "s = rga_ops.backends()['triton']\n"
             "print(s.usable)\n"
             "print(s.reason)\n"
             "x = torch.randn(1, 2, 3)\n"
             "try:\n"
             "    rga_ops.relation_stack(x, x, backend='triton')\n"
             "except rga_ops.BackendUnavailableError as e:\n"
             "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", probe], env=_without_interpreter(), capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.splitlines()
    assert out[0] == "False"
    assert "TRITON_INTERPRET=1" in out[1] or "triton does not import" in out[1]
    assert out[2].startswith("rga_ops backend 'triton' cannot run on cpu tensors: ") and out[1] in out[2]


@pytest.mark.slow
@pytest.mark.skipif(not STATUS.usable or not STATUS.interpreted,
                    reason="needs triton without a GPU (with one, the GPU tests compile and run the kernels)")
def test_every_kernel_compiles_for_sm90():
    """Each kernel's first autotuning configuration, in float32 (FMA path) and bfloat16 (tensor
    cores); `python -m tests.triton.compile_for_gpu --all-configs` compiles them all."""
    result = subprocess.run([sys.executable, "-m", "tests.triton.compile_for_gpu", "--dtypes", "float32,bfloat16"],
                            env=_without_interpreter(), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    compiled = [line for line in lines if line.startswith("ok ")]
    assert lines[-1] == f"{len(compiled)} of {len(compiled)} compiled", result.stdout
    kernels = [name for module in rga_triton.kernel_modules() for name, value in vars(module).items()
               if isinstance(value, _library.Tuned)]
    for kernel in kernels:  # each in float32 (FMA path) and bfloat16 (tensor cores) at least
        assert {"*fp32", "*bf16"} <= {t for line in compiled if line.split()[1] == kernel
                                      for t in line.split("[", 1)[1].split("]")[0].split(",")}, kernel
