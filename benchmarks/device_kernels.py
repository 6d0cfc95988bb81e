"""`python -m benchmarks.device_kernels [--device cuda]`: a small run of our two hand-written CUDA
device kernels, relation_stack's tiled forward and ha_soft_gate's forward and backward, for
`compute-sanitizer` (memcheck, racecheck) to watch: tile edges, several batch items, the
16-byte and the element paths of the gate, float32 and bfloat16. Each result is compared with
the CPU kernels; exits with status 1 on a mismatch. Small on purpose: under the sanitizer every
access is checked. `--device cpu` runs the same cases on the CPU kernels against themselves
(the validation plan's dry run)."""

from __future__ import annotations

import argparse
import sys

import torch

import rga_ops  # noqa: F401  (registers torch.ops.rga_ops)

# (B, C', N): N across the 64-wide tiles, C' across the 16-channel chunks.
RELATION_SHAPES = [(2, 17, 65), (3, 16, 128)]
# (B, C, H, W): H*W = 48 takes 16-byte vectors; 35 single elements.
GATE_SHAPES = [(2, 37, 8, 6), (2, 33, 5, 7)]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 5e-3}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _cases(device: str):
    """(what, result on `device`, the CPU kernels' result, dtype)."""
    g = torch.Generator().manual_seed(0)
    ops = torch.ops.rga_ops
    for dtype in TOLERANCE:
        for b, c, n in RELATION_SHAPES:
            theta, phi = (torch.randn(b, c, n, generator=g).to(dtype) for _ in range(2))
            yield (f"relation_stack {dtype} {(b, c, n)}", ops.relation_stack(theta.to(device), phi.to(device)),
                   ops.relation_stack(theta, phi), dtype)
        for b, c, h, w in GATE_SHAPES:
            x, grad = (torch.randn(b, c, h, w, generator=g).to(dtype) for _ in range(2))
            s = torch.rand(b, 1, h, w, generator=g).to(dtype)
            alpha, beta = torch.randn(b, c, generator=g), torch.randn(c, generator=g) * 0.5
            here = [t.to(device) for t in (grad, x, s, alpha, beta)]
            what = f"ha_soft_gate {dtype} {(b, c, h, w)}"
            yield what, ops.ha_soft_gate(*here[1:]), ops.ha_soft_gate(x, s, alpha, beta), dtype
            for name, got, want in zip(("dx", "ds", "dalpha", "dbeta"), ops.ha_soft_gate_backward(*here),
                                       ops.ha_soft_gate_backward(grad, x, s, alpha, beta)):
                yield f"ha_soft_gate_backward {name} {dtype} {(b, c, h, w)}", got, want, dtype


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    device = parser.parse_args(argv).device
    failures = 0
    for what, got, want, dtype in _cases(device):
        error = _relative(got, want)
        ok = error <= TOLERANCE[dtype]
        failures += not ok
        print(f"{'ok' if ok else 'MISMATCH'} {what}: relative error {error:.2g}", flush=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    print(f"{failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
