"""`python -m benchmarks.run`: RGAModule and relation-op tables, side by side.

For every RGA-Net stage shape and branch (rgasc, rgas, rgac), forward + backward
of RGAModule in float32: the reference (eager, and torch.compile'd unless
--quick), and each of our usable backends on the device. Columns: median time,
speed-up against reference eager (and against compiled reference), activation
memory kept for backward (distinct storages captured by saved_tensors_hooks) and
its reduction. Then the relation ops alone. Writes
benchmarks/results/<device>.json and .md with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import rga_ops
from rga_ops.check import BRANCHES, STAGES
from rga_ops.nn import RGAModule
from rga_ops.profiling import interleaved_median_seconds, saved_tensor_bytes

from .device import device_description, device_name, timed_backends

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _module_rows(device, batch, repeats, compile_reference, branches, stages):
    rows = []
    for branch in branches:
        for c, h, w in stages:
            x = torch.randn(batch, c, h, w, device=device, requires_grad=True)
            grad = torch.randn(batch, c, h, w, device=device)
            variants = {"reference": ("reference", False)}
            if compile_reference:
                variants["compile(reference)"] = ("reference", True)
            variants.update({b: (b, False) for b in timed_backends(device)})
            steps, saved = {}, {}
            for label, (backend, compiled) in variants.items():
                torch.manual_seed(0)
                module = RGAModule(c, h * w, *BRANCHES[branch], backend=backend).to(device)
                run = torch.compile(module) if compiled else module
                _, saved[label] = saved_tensor_bytes(lambda: run(x))
                steps[label] = (lambda run: lambda: run(x).backward(grad))(run)
            seconds = interleaved_median_seconds(steps, device, 2, repeats)
            for label in variants:
                row = dict(module=branch, in_channel=c, hw=f"{h}x{w}", batch=batch, variant=label,
                           ms=seconds[label] * 1e3, saved_mb=saved[label] / 2**20,
                           speedup=seconds["reference"] / seconds[label],
                           speedup_vs_compiled=(seconds["compile(reference)"] / seconds[label]
                                                if compile_reference else None),
                           memory_reduction=saved["reference"] / saved[label])
                rows.append(row)
                print(_format_module_row(row), flush=True)
    return rows


def _format_module_row(r) -> str:
    vs_compiled = f"{r['speedup_vs_compiled']:.2f}x" if r["speedup_vs_compiled"] else "-"
    reduction = f"{r['memory_reduction']:.1f}x" if r["memory_reduction"] else ""
    return (f"| {r['module']} | ({r['in_channel']}, {r['hw']}) | {r['variant']} | {r['ms']:.1f} | "
            f"{r['speedup']:.2f}x | {vs_compiled} | {r['saved_mb']:.1f} | {reduction} |")


def _op_rows(device, batch, repeats):
    """relation_project / relation_stack alone, forward (no autograd) and forward + backward, at each
    spatial-branch shape."""
    rows = []
    for c, h, w in STAGES:
        n, ci, k = h * w, c // 8, h * w // 8
        theta = torch.randn(batch, ci, n, device=device, requires_grad=True)
        phi = torch.randn(batch, ci, n, device=device, requires_grad=True)
        weight = torch.randn(k, 2 * n, device=device, requires_grad=True)
        for op in ("relation_project", "relation_stack"):
            fn = getattr(rga_ops, op)
            args = (theta, phi, weight) if op == "relation_project" else (theta, phi)
            grad = torch.randn_like(fn(*args, backend="torch"))
            backends = ["reference", *timed_backends(device)]

            def forward(b):
                def run():
                    with torch.no_grad():
                        fn(*args, backend=b)
                return run

            forward_seconds = interleaved_median_seconds({b: forward(b) for b in backends}, device, 2, repeats)
            steps = {b: (lambda b: lambda: fn(*args, backend=b).backward(grad))(b) for b in backends}
            seconds = interleaved_median_seconds(steps, device, 2, repeats)
            for backend in backends:
                row = dict(op=op, shape=f"B={batch}, C'={ci}, N={n}" + (f", K={k}" if op == "relation_project" else ""),
                           variant=backend, forward_ms=forward_seconds[backend] * 1e3, ms=seconds[backend] * 1e3,
                           speedup=seconds["reference"] / seconds[backend])
                rows.append(row)
                print(_format_op_row(row), flush=True)
    return rows


def _format_op_row(r) -> str:
    return (f"| {r['op']} | {r['shape']} | {r['variant']} | {r['forward_ms']:.2f} | {r['ms']:.2f} | "
            f"{r['speedup']:.2f}x |")


def _write(device, command, module_rows, op_rows):
    name = device_name(device)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(dict(device=device_description(device), command=command, modules=module_rows, ops=op_rows), f, indent=1)
    lines = [f"# Benchmarks on {device_description(device)}", "", f"Command: `{command}`", "",
             "## RGAModule, forward + backward, float32", "",
             "Saved MB: activation memory kept for backward (distinct storages captured by "
             "`torch.autograd.graph.saved_tensors_hooks`).", "",
             "| module | (C, HxW) | variant | ms | speed-up | vs compiled ref | saved MB | less memory |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [_format_module_row(r) for r in module_rows]
    lines += ["", "## Relation ops, float32", "",
              "Forward without autograd; forward + backward with the gradients of all inputs.", "",
              "| op | shape | backend | fwd ms | fwd+bwd ms | fwd+bwd speed-up |", "|---|---|---|---|---|---|"]
    lines += [_format_op_row(r) for r in op_rows]
    path = os.path.join(RESULTS, f"{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwrote {path} and .json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on the CPU, 64 on a GPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="batch 2, rgasc only, no torch.compile, nothing written")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (2 if args.quick else 8 if device.type == "cpu" else 64)
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{device_description(device)}\n")
    branches = ["rgasc"] if args.quick else list(BRANCHES)
    module_rows = _module_rows(device, batch, 2 if args.quick else args.repeats, not args.quick, branches, STAGES)
    op_rows = _op_rows(device, batch, 2 if args.quick else args.repeats)
    if not args.quick:
        _write(device, command.strip(), module_rows, op_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
