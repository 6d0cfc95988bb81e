"""Helpers of the whole-model tests: one training or evaluation step of a network with
everything it produces (outputs, gradients, buffers), and their comparison."""

from __future__ import annotations

import pytest
import torch
import torchvision

from rga_ops.testing import randomise_batch_norms


def flatten(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for o in outputs for t in flatten(o)]


def model_step(model: torch.nn.Module, x: torch.Tensor, seed: int = 0, backward: bool = True) -> dict[str, torch.Tensor]:
    """Outputs of model(x) in its current mode and the buffers afterwards; in training mode
    (with `backward`) also the input and parameter gradients of a fixed random linear
    function of the outputs."""
    backward = backward and model.training
    x = x.detach().clone().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        outputs = flatten(model(x))
    result = {f"output {i}": o.detach() for i, o in enumerate(outputs)}
    if backward:
        g = torch.Generator().manual_seed(seed)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outputs)
        loss.backward()
        result["grad of the input"] = x.grad
        result.update({f"grad of {n}": p.grad for n, p in model.named_parameters() if p.requires_grad})
    result.update({n: b.detach().clone() for n, b in model.named_buffers() if b.dtype.is_floating_point})
    return result


def relative_errors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, float]:
    """max |got - expected| / max |expected| per entry. Gradients are measured against the
    largest parameter gradient when their own is tiny: a conv bias followed by a training-mode
    BatchNorm has an exactly-zero gradient, so its computed one is rounding noise."""
    assert set(got) == set(expected), set(got) ^ set(expected)
    grad_scale = max((v.abs().max().item() for k, v in expected.items() if k.startswith("grad of ")), default=0.0)
    errors = {}
    for k, e in expected.items():
        a, e = got[k].detach().double().cpu(), e.detach().double().cpu()
        assert a.shape == e.shape, f"{k}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        scale = e.abs().max().item()
        if k.startswith("grad of "):
            scale = max(scale, 1e-6 * grad_scale)
        errors[k] = (a - e).abs().max().item() / scale if scale > 0 else (a - e).abs().max().item()
    return errors


def assert_steps_match(got: dict, expected: dict, tol_out: float, tol_grad: float, what: str = "") -> None:
    errors = relative_errors(got, expected)
    bad = {k: v for k, v in errors.items() if v > (tol_grad if k.startswith("grad of ") else tol_out)}
    worst = sorted(bad.items(), key=lambda kv: -kv[1])[:5]
    assert not bad, f"{what}: {len(bad)} entries beyond tolerance, worst: " + ", ".join(f"{k} {v:.2g}" for k, v in worst)


def with_realistic_statistics(model: torch.nn.Module, x: torch.Tensor, seed: int = 1) -> torch.nn.Module:
    """Random BatchNorm parameters, then running statistics from two training-mode passes
    (momentum 0.5), so that eval mode normalises with plausible statistics."""
    randomise_batch_norms(model, seed)
    momenta = {}
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            momenta[m], m.momentum = m.momentum, 0.5
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    for m, momentum in momenta.items():
        m.momentum = momentum
    return model


@pytest.fixture(scope="session")
def imagenet_resnet50_file(tmp_path_factory):
    """(torchvision ResNet-50 standing in for the ImageNet one, the file of its state_dict)."""
    torch.manual_seed(0)
    model = randomise_batch_norms(torchvision.models.resnet50()).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return model, path
