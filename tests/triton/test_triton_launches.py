"""How the Triton kernels are launched, for every op: an empty batch, more batch items (and
gate position blocks) than a CUDA grid holds along y and z, offsets past 2^31, and the device
every launch is made on."""

import ast
import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rga_ops import reference
from rga_ops.reference import soft_gate
from rga_ops.triton import _library, ha_soft_gate, relation_project, relation_stack
from tests.triton.support import TRITON_TESTS, compare_with_float64, leaf, randn

pytestmark = TRITON_TESTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = torch.ops.rga_ops_triton


def _stack(theta, phi):
    return OPS.relation_stack(theta, phi)


def _project(theta, phi, weight):
    return OPS._relation_project(theta, phi, weight)[0]


def _cases(b):
    """(name, triton op, reference, inputs) for every op at batch size b."""
    s = randn(b, 1, 10, 9, seed=1).abs()
    yield "relation_stack", _stack, reference.relation_stack, [randn(b, 3, 21), randn(b, 3, 21, seed=1)]
    yield ("relation_project", _project, reference.relation_project,
           [randn(b, 3, 21), randn(b, 3, 21, seed=1), randn(5, 42, seed=2)])
    yield ("ha_soft_gate", OPS.ha_soft_gate, soft_gate,
           [randn(b, 5, 10, 9), s, randn(b, 5, seed=2), randn(5, seed=3, scale=0.5)])


@pytest.mark.parametrize("name", ["relation_stack", "relation_project", "ha_soft_gate"])
def test_empty_batch(name):
    """B = 0: empty outputs, and gradients (zeros for the parameters shared by the batch)."""
    _, op, ref, inputs = next(case for case in _cases(0) if case[0] == name)
    inputs = [leaf(t) for t in inputs]
    out = op(*inputs)
    assert out.shape == ref(*inputs).shape and out.numel() == 0
    grads = torch.autograd.grad(out, inputs, torch.zeros_like(out), allow_unused=True)
    for t, g in zip(inputs, grads):
        assert g is not None and g.shape == t.shape and not g.any(), name


def test_more_items_and_position_blocks_than_the_grid_holds(monkeypatch):
    """With the grid capped at 2 programs along y and z, each program strides over the batch
    items (relation ops) and the gate's position blocks (90 positions, blocks of 32): the same
    results as the reference, forward and backward."""
    monkeypatch.setattr(_library, "MAX_GRID_YZ", 2)
    for name, op, ref, inputs in _cases(5):
        compare_with_float64(op, ref, inputs, torch.float64, f"{name} with a capped grid")


def _called(node) -> str:
    return getattr(node.func, "id", "") if isinstance(node, ast.Call) else ""


def test_every_launch_is_made_on_the_tensors_device():
    """triton launches on the current device, which need not be the inputs': every launch in
    the kernel modules (a wrap_triton call, or a call of a module-level helper that launches)
    sits inside `with on_device(...)`."""
    for module in (relation_stack, relation_project, ha_soft_gate):
        tree = ast.parse(textwrap.dedent(inspect.getsource(module)))
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any(_called(item.context_expr) == "on_device" for item in node.items):
                guarded.update(id(inner) for inner in ast.walk(node))
        # Module-level helpers that launch (e.g. relation_project's _coefficients): their callers
        # are checked instead of them.
        helpers = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name != "register"
                   and any(_called(n) == "wrap_triton" for n in ast.walk(f))}
        inside_helpers = {id(n) for f in helpers.values() for n in ast.walk(f)}
        launches = [n for n in ast.walk(tree) if _called(n) in {"wrap_triton", *helpers} and id(n) not in inside_helpers]
        assert launches, module.__name__
        unguarded = [n.lineno for n in launches if id(n) not in guarded]
        assert not unguarded, f"{module.__name__}: launches outside on_device at lines {unguarded}"


def test_on_device_makes_the_tensors_gpu_current(monkeypatch):
    made_current = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: made_current.append(device) or _Nothing())

    class OnSecondGpu:
        device = torch.device("cuda", 1)

    with _library.on_device(OnSecondGpu()):
        pass
    with _library.on_device(torch.zeros(1)):
        pass
    assert made_current == [torch.device("cuda", 1)]


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# Offsets past 2^31 with small tensors: views with large strides into buffers of a few GB that
# are allocated but, except where the kernels read and write, never touched (so never paged in).
# A kernel indexing in 32 bits writes far outside the buffer: the probe runs in a subprocess, so
# that the crash fails the test instead of the test run.
_LARGE_OFFSETS = r"""
import torch, triton
import rga_ops
from rga_ops.reference import soft_gate
from rga_ops.triton import relation_stack

def relative(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

# relation_stack: J's rows 2^25 elements apart, as they are from N = 2^25 on (J itself would
# be 2^51 elements): row offsets (N + i) * stride pass 2^31 from row 64 on.
n, c, row = 48, 3, 2**25
g = torch.Generator().manual_seed(0)
theta, phi = (torch.randn(1, c, n, generator=g).half() for _ in range(2))
buffer = torch.empty(2 * n * row, dtype=torch.float16)
out = buffer.as_strided((1, 2 * n, n), (2 * n * row, row, 1))
out.fill_(float("nan"))
kernel = relation_stack._relation_stack_kernel.for_dtype(torch.float16)
grid = lambda meta: (triton.cdiv(n, meta["BLOCK_I"]), triton.cdiv(n, meta["BLOCK_J"]), 1)
kernel[grid](theta, phi, out, 1, c, n, *theta.stride(), *phi.stride(), *out.stride(), FP64=False, PRECISION="ieee")
print("relation_stack", relative(out, rga_ops.reference.relation_stack(theta.double(), phi.double())))

# ha_soft_gate: x and its gradient with channels 2^27 elements apart (an item of 2^31 elements and
# more): channel offsets o * stride pass 2^31 from channel 16 on.
b, ch, h, w, plane = 1, 20, 4, 3, 2**27
def spread(t):
    view = torch.empty(ch * plane, dtype=t.dtype).as_strided(t.shape, (ch * plane, plane, w, 1))
    return view.copy_(t)
x, grad = (torch.randn(b, ch, h, w, generator=g).half() for _ in range(2))
s = torch.rand(b, 1, h, w, generator=g).half()
alpha, beta = torch.randn(b, ch, generator=g), torch.randn(ch, generator=g) * 0.5
inputs = [t.double().requires_grad_() for t in (x, s, alpha, beta)]
expected = soft_gate(*inputs)
expected_grads = torch.autograd.grad(expected, inputs, grad.double())
ops = torch.ops.rga_ops_triton
print("ha_soft_gate", relative(ops.ha_soft_gate(spread(x), s, alpha, beta), expected))
grads = ops.ha_soft_gate_backward(spread(grad), spread(x), s, alpha, beta)
print("ha_soft_gate_backward", max(relative(a, e) for a, e in zip(grads, expected_grads)))
"""


@pytest.mark.slow
@pytest.mark.skipif(not _library.STATUS.interpreted, reason="the probe runs the kernels on the CPU, in the interpreter")
def test_offsets_past_2_to_the_31():
    result = subprocess.run([sys.executable, "-c", _LARGE_OFFSETS], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert result.returncode == 0, f"the probe failed (exit status {result.returncode}):\n{result.stderr[-3000:]}"
    errors = dict(line.split() for line in result.stdout.splitlines())
    assert set(errors) == {"relation_stack", "ha_soft_gate", "ha_soft_gate_backward"}, result.stdout
    for name, error in errors.items():
        assert float(error) < 2e-3, f"{name}: relative error {error}"
