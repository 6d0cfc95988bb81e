"""Mixed precision: both networks train and infer under torch.autocast without NaNs or
infs, at the default initialisation and after optimiser steps, with every backend;
their reduced-precision results stay close to float32 ones."""

import pytest
import torch

import rga_ops
from models.inference.fold import fold_for_inference
from models.networks.hacnn import HACNN
from models.networks.rganet import RGANet
from tests.conftest import assert_relative, fast_backends, needs_gpu, relative_error
from tests.models.common import flatten

SMALL = dict(height=64, width=32, scale=4, d_scale=2)
CUDA_DTYPES = [torch.float16, torch.bfloat16]


def _model(kind, backend):
    torch.manual_seed(0)
    if kind == "rganet":
        return RGANet(5, backend=backend, **SMALL), (3, 64, 32)
    return HACNN(5, backend=backend), (3, 160, 64)


def _logits(kind, outputs):
    return outputs[2] if kind == "rganet" else outputs[0]


def _train_and_evaluate(kind, backend, device, dtype, steps=3):
    """Adam steps under autocast (with a GradScaler for float16), then evaluation of the
    model and of its folded copy; everything is checked to be finite."""
    model, shape = _model(kind, backend)
    model.to(device)
    g = torch.Generator().manual_seed(1)
    x, labels = torch.randn(2, *shape, generator=g).to(device), torch.randint(0, 5, (2,), generator=g).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    for step in range(steps):
        with torch.autocast(device, dtype=dtype):
            outputs = model(x)
            loss = torch.nn.functional.cross_entropy(_logits(kind, outputs), labels)
        assert all(o.dtype in (dtype, torch.float32) for o in flatten(outputs))
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        assert torch.isfinite(loss), f"step {step}: loss {loss.item()}"
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), f"step {step}: grad of {name} is not finite"
        scaler.step(optimizer)
        scaler.update()
    model.eval()
    with torch.no_grad():
        expected = flatten(model(x))
        with torch.autocast(device, dtype=dtype):
            got = flatten(model(x))
            folded = flatten(fold_for_inference(model)(x))
    for what, outputs in (("eval", got), ("folded eval", folded)):
        assert all(torch.isfinite(o).all() for o in outputs), f"{what} output not finite"
    return got, folded, expected


@pytest.mark.parametrize("kind", ["rganet", "hacnn"])
def test_bfloat16_autocast_on_the_cpu(kind):
    """With the default backend (our kernels); the "torch" backend's relation op under autocast
    is tested below."""
    got, folded, expected = _train_and_evaluate(kind, "auto", "cpu", torch.bfloat16)
    for g, f, e in zip(got, folded, expected, strict=True):
        assert_relative(g, e, 5e-2, "bfloat16 eval output against float32")
        assert_relative(f, e, 5e-2, "bfloat16 folded output against float32")


@needs_gpu()
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["rganet", "hacnn"])
def test_autocast_on_the_gpu(kind, dtype):
    got, folded, expected = _train_and_evaluate(kind, "auto", "cuda", dtype)
    for g, f, e in zip(got, folded, expected, strict=True):
        assert_relative(g, e, 5e-2, f"{dtype} eval output against float32")
        assert_relative(f, e, 5e-2, f"{dtype} folded output against float32")


@pytest.mark.parametrize("backend", fast_backends("cpu"))
def test_relation_project_takes_float32_weights_under_autocast(backend):
    """Inside autocast its product operands are cast as matmul's are (float32 accumulation stays)."""
    g = torch.Generator().manual_seed(0)
    theta, phi = torch.randn(2, 8, 96, generator=g), torch.randn(2, 8, 96, generator=g)
    weight = torch.randn(16, 192, generator=g, requires_grad=True)
    expected = rga_ops.relation_project(theta.bfloat16().float(), phi.bfloat16().float(),
                                        weight.detach().bfloat16().float(), backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = rga_ops.relation_project(theta.bfloat16(), phi.bfloat16(), weight, backend=backend)
    assert got.dtype == torch.bfloat16
    assert relative_error(got.float(), expected) < 1e-2
    got.float().sum().backward()
    assert weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()
