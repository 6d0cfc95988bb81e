import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import rga_ops
from rga_ops import _extension
from tests.conftest import requires_cuda

# The module (the package attribute `rga_ops.backends` is the function of that name).
backends = importlib.import_module("rga_ops.backends")


def test_report_lists_every_backend_with_a_reason():
    report = rga_ops.backends()
    assert list(report) == ["reference", "torch", "cpp", "cuda", "triton"]
    for status in report.values():
        assert status.reason
        assert status.usable == bool(status.devices)
    assert report["reference"].usable and report["torch"].usable
    text = str(report)
    assert "auto picks: cpu -> cpp" in text


def test_cuda_backend_says_where_it_runs_or_why_not():
    status, built = rga_ops.backends()["cuda"], _extension.STATUS
    if not built.loaded:
        assert (status.usable, status.reason) == (False, built.reason)
    elif not built.cuda_kernels:
        assert not status.usable
        assert status.reason == f"rga_ops._C was built without CUDA kernels: {built.build_info['decision']}"
    elif not torch.cuda.is_available():
        assert (status.usable, status.reason) == (False, "CUDA kernels are compiled but no GPU is visible")
    else:
        assert status.usable and status.devices == ("cuda",)
        assert status.reason == f"CUDA kernels for {built.build_info['cuda_arch_list']}"


@requires_cuda
def test_auto_picks_the_cuda_kernels_for_cuda_tensors():
    assert backends.resolve_backend("auto", torch.device("cuda")) == "cuda"
    assert "cuda -> cuda" in str(rga_ops.backends())
    assert _extension.STATUS.build_info["cuda"]


def test_explicit_backend_that_cannot_run_raises_with_the_reason():
    x = torch.randn(2, 3, 4)
    with pytest.raises(rga_ops.BackendUnavailableError, match="backend 'cuda' cannot run on cpu tensors"):
        rga_ops.relation_stack(x, x, backend="cuda")


def test_auto_degrades_loudly(monkeypatch):
    """With the cpp backend unusable, "auto" on the CPU runs "torch" and says why, once."""
    broken = backends.BackendStatus("cpp", False, (), "simulated: extension missing")
    monkeypatch.setitem(backends._STATUS, "cpp", broken)
    monkeypatch.setattr(backends, "_warned_degraded", set())
    with pytest.warns(UserWarning, match="uses 'torch' on cpu because 'cpp' is unavailable: simulated"):
        assert backends.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert "auto picks: cpu -> torch" in str(rga_ops.backends())
    with pytest.raises(rga_ops.BackendUnavailableError, match="simulated: extension missing"):
        backends.resolve_backend("cpp", torch.device("cpu"))


def _copy_of_the_package(tmp_path, build_info=None):
    """A copy of the installed package whose _build_info.json is replaced (or removed)."""
    root = tmp_path / "site"
    shutil.copytree(os.path.dirname(rga_ops.__file__), root / "rga_ops",
                    ignore=shutil.ignore_patterns("__pycache__"))
    info = root / "rga_ops" / "_build_info.json"
    if build_info is None:
        info.unlink()
    else:
        info.write_text(json.dumps(build_info))
    return root


@pytest.mark.parametrize("case", ["other_torch", "no_build_info"])
def test_an_extension_built_for_another_torch_is_not_loaded(tmp_path, case):
    """The check that runs before the library is loaded: a mismatch is reported, never imported."""
    info = {"torch": "1.0.0", "cuda": False} if case == "other_torch" else None
    root = _copy_of_the_package(tmp_path, info)
    probe = ("import rga_ops, torch; s = rga_ops.backends()['cpp']; "
             "print(s.usable); print(s.reason); print(hasattr(torch.ops.rga_ops, 'relation_stack'))")
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout.splitlines()
    assert out[0] == "False"
    expected = "built for torch 1.0.0" if case == "other_torch" else "cannot read"
    assert expected in out[1] and "pip install" in out[1]
    assert out[2] == "False"  # the library was not loaded


def test_extension_status_of_this_install():
    assert _extension.STATUS.loaded, _extension.STATUS.reason
    assert _extension.STATUS.build_info["torch"] == torch.__version__


def test_auto_follows_the_measured_table_by_size(monkeypatch):
    """A measured exception to the device's order applies up to its size and only where it can run."""
    cpu = torch.device("cpu")
    monkeypatch.setitem(backends._MEASURED_AUTO, ("cpu", "relation_project"), ((16, "torch"), (64, "cuda")))
    assert backends.resolve_backend("auto", cpu, "relation_project", 16) == "torch"
    assert backends.resolve_backend("auto", cpu, "relation_project", 17) == "cpp"  # cuda cannot run on the CPU
    assert backends.resolve_backend("auto", cpu, "relation_project", 100) == "cpp"
    assert backends.resolve_backend("auto", cpu, "relation_stack", 8) == "cpp"
    assert backends.resolve_backend("auto", cpu) == "cpp"
