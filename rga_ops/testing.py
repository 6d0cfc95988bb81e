"""What the tests, the benchmarks and `python -m rga_ops.check` share to compare an rga_ops
module with its reference: RGA-Net's stage shapes and branches, BatchNorms with non-trivial
statistics, one training step's outputs and gradients, and the relative errors of all of them
between RGAModule with given backends and ReferenceRGAModule in the same state."""

from __future__ import annotations

import torch

from .nn import RGAModule
from .profiling import relative_error
from .reference import ReferenceRGAModule

# RGA-Net's four stages at 256x128 input: (in_channel, H, W).
STAGES = ((256, 64, 32), (512, 32, 16), (1024, 16, 8), (2048, 16, 8))
BRANCHES = {"rgasc": (True, True), "rgas": (True, False), "rgac": (False, True)}


def randomise_batch_norms(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial BatchNorm affine parameters and running statistics (the default
    1/0 would leave parts of the computation unexercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.dtype.is_floating_point and t.dim() == 1:
                if name.endswith(("running_var", "weight")):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) * 0.5 + 0.75)
                else:
                    t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) * 0.1)
    return module


def training_step(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output, input gradient, parameter gradients and buffers after one forward + backward."""
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(grad)
    result = {"output": out.detach(), "grad of the input": x.grad}
    result.update({f"grad of {n}": p.grad for n, p in module.named_parameters()})
    result.update({n: b.detach().clone() for n, b in module.named_buffers()})
    return result


def compare_with_reference(
    in_channel: int, h: int, w: int, branch: str, training: bool, dtype: torch.dtype, batch: int,
    backend_names: list[str], ratios: tuple[int, int, int] = (8, 8, 8),
    memory_format: torch.memory_format = torch.contiguous_format, device: str | torch.device = "cpu",
) -> dict[str, dict[str, float]]:
    """Relative error of every output, gradient and buffer of RGAModule with each of
    `backend_names` against ReferenceRGAModule in the same state, on the same input (both on `device`)."""
    torch.manual_seed(0)
    ref = randomise_batch_norms(ReferenceRGAModule(in_channel, h * w, *BRANCHES[branch], *ratios))
    ref = ref.to(device=device, dtype=dtype).train(training)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    x = torch.randn(batch, in_channel, h, w, dtype=dtype).to(device)
    grad = torch.randn(batch, in_channel, h, w, dtype=dtype).to(device)
    expected = training_step(ref, x, grad)
    errors = {}
    for backend in backend_names:
        module = RGAModule(in_channel, h * w, *BRANCHES[branch], *ratios, backend=backend)
        module = module.to(device=device, dtype=dtype).train(training)
        module.load_state_dict(state)
        got = training_step(module, x.to(memory_format=memory_format), grad)
        errors[backend] = {k: relative_error(got[k], v) for k, v in expected.items()}
    return errors
