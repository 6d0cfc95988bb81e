"""`python -m benchmarks.ha_soft_gate`: HA's soft-attention gate, fused vs reference.

At the HA-CNN shapes (C x H x W = 128x40x16, 256x20x8, 384x10x4) and a large one
(256x64x32), batch 32 and 64, float32, training mode:
  gate   ha_soft_gate(x, s, c, conv and BN parameters) alone: the reference computes
         x * sigmoid(relu(BN(conv1x1(s * c)))) as torchreid does; ours in closed form.
  module x * SoftAttn(x) (torchreid's way) vs SoftAttention.gate(x): the whole soft attention.
  kernel the registered operator rga_ops::ha_soft_gate(x, s, alpha, beta) alone (the memory-bound
         pass over x) against the same gate in plain PyTorch ops (backend "torch").
Time (median, interleaved rounds; CUDA events on a GPU) of the forward and of forward +
backward, peak memory allocated during forward + backward, and the forward's effective
bandwidth (x read + out written) next to the copy bandwidth of a tensor of x's size measured
in the same run, and their ratio. The load average before and after is recorded: on a shared
machine the ratios, measured side by side, mean more than the times. Writes
benchmarks/results/ha_soft_gate-<device>.json and .md."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import rga_ops
from rga_ops.nn import SoftAttention
from rga_ops.profiling import copy_bandwidth, interleaved_median_seconds, peak_allocated_bytes
from rga_ops.reference import SoftAttn, soft_gate
from rga_ops.testing import randomise_batch_norms

from .device import device_description, device_name, timed_backends

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPES = ((128, 40, 16), (256, 20, 8), (384, 10, 4), (256, 64, 32))


def _backends(device):
    return ["reference", *timed_backends(device)]


def _gate_steps(batch, c, h, w, device):
    """Per backend: (forward, forward + backward) of ha_soft_gate alone on fixed s, c."""
    g = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    x, s, ch = make(batch, c, h, w), make(batch, 1, h, w).abs(), make(batch, c)
    params = [make(c, c) * 0.1, make(c) * 0.1, make(c).abs() + 0.5, make(c) * 0.1]
    inputs = [t.requires_grad_() for t in (x, s, ch, *params)]
    stats = [torch.zeros(c, device=device), torch.ones(c, device=device)]
    grad = make(batch, c, h, w)

    def forward(backend):
        return lambda: rga_ops.ha_soft_gate(*inputs, *stats, True, 0.1, 1e-5, backend=backend)

    def step(backend):
        return lambda: forward(backend)().backward(grad)

    return x, {b: (forward(b), step(b)) for b in _backends(device)}


def _gate_operator(backend: str):
    """The gate x * sigmoid(relu(alpha s + beta)) of a backend: its registered operator, or for
    "torch" the same in plain PyTorch ops."""
    if backend == "torch":
        return soft_gate
    return torch.ops.rga_ops_triton.ha_soft_gate if backend == "triton" else torch.ops.rga_ops.ha_soft_gate


def _kernel_steps(batch, c, h, w, device):
    """Per backend: the gate itself on given alpha, beta (forward, forward + backward)."""
    g = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    inputs = [t.requires_grad_() for t in (make(batch, c, h, w), make(batch, 1, h, w).abs(), make(batch, c), make(c))]
    grad = make(batch, c, h, w)
    steps = {}
    for backend in _backends(device)[1:]:
        gate = _gate_operator(backend)
        steps[backend] = ((lambda f: lambda: f(*inputs))(gate), (lambda f: lambda: f(*inputs).backward(grad))(gate))
    return inputs[0], steps


def _module_steps(batch, c, h, w, device):
    torch.manual_seed(0)
    reference = randomise_batch_norms(SoftAttn(c)).to(device)
    x = torch.randn(batch, c, h, w, device=device, requires_grad=True)
    grad = torch.randn(batch, c, h, w, device=device)
    steps = {"reference": (lambda: x * reference(x), lambda: (x * reference(x)).backward(grad))}
    for backend in _backends(device)[1:]:
        module = SoftAttention(c, backend=backend).to(device)
        module.load_state_dict(reference.state_dict())
        steps[backend] = ((lambda m: lambda: m.gate(x))(module), (lambda m: lambda: m.gate(x).backward(grad))(module))
    return x, steps


def _measure(kind, batch, shape, device, repeats):
    x, steps = {"gate": _gate_steps, "module": _module_steps, "kernel": _kernel_steps}[kind](batch, *shape, device)
    baseline = next(iter(steps))  # the reference, or for the kernel alone the gate in plain PyTorch ops
    copy_gbs = copy_bandwidth(x.detach()) / 1e9
    forward = interleaved_median_seconds({b: f for b, (f, _) in steps.items()}, device, 2, repeats)
    full = interleaved_median_seconds({b: s for b, (_, s) in steps.items()}, device, 2, repeats)
    peak = {b: peak_allocated_bytes(s, device) for b, (_, s) in steps.items()}
    rows = []
    for b in steps:
        rows.append(dict(kind=kind, shape="x".join(map(str, shape)), batch=batch, variant=b,
                         forward_ms=forward[b] * 1e3, step_ms=full[b] * 1e3,
                         speedup=full[baseline] / full[b], peak_mb=peak[b] / 2**20,
                         memory_reduction=peak[baseline] / peak[b],
                         forward_gbs=2 * x.numel() * x.element_size() / forward[b] / 1e9, copy_gbs=copy_gbs))
        print(_format(rows[-1]), flush=True)
    return rows


def _format(r) -> str:
    return (f"| {r['kind']} | {r['shape']} | {r['batch']} | {r['variant']} | {r['forward_ms']:.2f} | "
            f"{r['step_ms']:.2f} | {r['speedup']:.2f}x | {r['peak_mb']:.1f} | {r['memory_reduction']:.1f}x | "
            f"{r['forward_gbs']:.1f} | {r['copy_gbs']:.1f} | {r['forward_gbs'] / r['copy_gbs']:.0%} |")


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


HEADER = ["| part | C x H x W | batch | variant | forward ms | fwd+bwd ms | fwd+bwd speed-up | peak MB | "
          "less memory | forward GB/s | copy GB/s | of copy |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ha_soft_gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="batch 32, the first shape, nothing written")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    command = "python -m benchmarks.ha_soft_gate " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = _load_average()
    print(device_description(device) + f", load average {load_before}\n\n" + "\n".join(HEADER))
    rows = []
    for batch in (32,) if args.quick else (32, 64):
        for shape in SHAPES[:1] if args.quick else SHAPES:
            for kind in ("gate", "module", "kernel"):
                rows += _measure(kind, batch, shape, device, 3 if args.quick else args.repeats)
    load_after = _load_average()
    print(f"\nload average before {load_before}, after {load_after}")
    if not args.quick:
        name = device_name(device)
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, f"ha_soft_gate-{name}.json"), "w") as f:
            json.dump(dict(device=device_description(device), command=command.strip(), load_before=load_before,
                           load_after=load_after, rows=rows), f, indent=1)
        lines = [f"# ha_soft_gate on {device_description(device)}", "", f"Command: `{command.strip()}`", "",
                 f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}.", "",
                 "float32, training mode. `gate`: the gate alone on given s and c; `module`: x * SoftAttn(x) "
                 "against SoftAttention.gate(x); `kernel`: rga_ops::ha_soft_gate(x, s, alpha, beta) against the "
                 "same gate in plain PyTorch ops (speed-up and memory relative to the first variant of each part). "
                 "Peak MB: allocated during forward + backward above what existed "
                 "before. Forward GB/s: x read + out written per forward time; of copy: that over the copy "
                 "bandwidth of a tensor of x's size.", "", *HEADER,
                 *[_format(r) for r in rows]]
        path = os.path.join(RESULTS, f"ha_soft_gate-{name}.md")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"\nwrote {path} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
