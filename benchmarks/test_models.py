"""Model-level pytest-benchmarks, float32: a training step (forward, loss, backward, optimiser
step) and inference (eval mode under inference_mode) of the ResNet-50 baseline, RGA-SC, RGA-S
and RGA-C at 256x128 and HA-CNN at 160x64, each with our kernels and with the reference
computation (batch 2 on the CPU, 32 on a GPU; python -m benchmarks.models has the interleaved,
side-by-side comparison). extra_info: images per second and the peak memory."""

from __future__ import annotations

import pytest
import torch

from models.networks.hacnn import HACNN
from models.networks.reference_hacnn import ReferenceHACNN
from models.networks.rganet import RGANet

from .conftest import DEVICE
from .models import _hacnn_loss, _inference, _rganet_loss, _training_step

BATCH = 2 if DEVICE.type == "cpu" else 32
CLASSES = 751
CASES = [("baseline", "ours"), *[(m, v) for m in ("rgasc", "rgas", "rgac", "hacnn") for v in ("ours", "reference")]]


def _model(name: str, variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "hacnn":
        return HACNN(CLASSES) if variant == "ours" else ReferenceHACNN(CLASSES)
    return RGANet(CLASSES, name, backend="auto" if variant == "ours" else "reference")


@pytest.mark.parametrize("mode", ["training step", "inference"])
@pytest.mark.parametrize("name, variant", CASES, ids=[f"{m}-{v}" for m, v in CASES])
def test_model(timed, name, variant, mode):
    model = _model(name, variant).to(DEVICE)
    size = (160, 64) if name == "hacnn" else (256, 128)
    x = torch.randn(BATCH, 3, *size, device=DEVICE)
    if mode == "inference":
        run = _inference(model.eval(), x)
    else:
        labels = torch.arange(BATCH, device=DEVICE) // 4 % CLASSES
        loss, optimizer = ((_hacnn_loss, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)) if name == "hacnn"
                           else (_rganet_loss, torch.optim.Adam(model.parameters(), lr=3e-4)))
        run = _training_step(model.train(), x, labels, loss, optimizer)
    timed(run, rounds=3, images=BATCH)
