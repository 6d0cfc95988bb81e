"""`python -m benchmarks.run`: RGAModule and relation-op tables, side by side.

For every RGA-Net stage shape and branch (rgasc, rgas, rgac), RGAModule in float32:
the reference (eager, and torch.compile'd unless --quick), and each of our usable
backends on the device. Then the relation ops alone at each stage's two relation
branches: spatial (C' = C/8, N = H*W, K = N/8) and channel (C' = H*W/8, N = C, K = C/8),
each with the reference, torch.compile(reference) and our backends.
Columns: median time of the forward (as in training: autograd records it) and of
forward + backward, speed-ups against the reference eager and compiled, peak memory
allocated during forward + backward (and, for the module, the activation memory kept
for backward), and the rate achieved: TFLOP/s for relation_project (of the algorithm
the variant runs), GB/s of J written for relation_stack, next to the time that writing
J takes at the copy bandwidth measured in the same run. Timing: interleaved rounds,
CUDA events on a GPU (rga_ops.profiling). Writes benchmarks/results/<device>.json and
.md (`<device>-<part>[-<branches>]` for a part of it) with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import rga_ops
from rga_ops import reference
from rga_ops.check import BRANCHES, STAGES
from rga_ops.nn import RGAModule
from rga_ops.profiling import copy_bandwidth, interleaved_median_seconds, peak_allocated_bytes, saved_tensor_bytes

from .device import device_description, device_name, timed_backends

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _compiled(fn):
    # A fresh compilation per shape: otherwise Dynamo's recompilation limit would quietly
    # leave the later shapes of a benchmark running eagerly.
    torch._dynamo.reset()
    return torch.compile(fn)


def _measure(variants, device, repeats):
    """variants: label -> (forward, forward + backward). Returns label -> (forward s, step s, peak bytes)."""
    forward = interleaved_median_seconds({k: f for k, (f, _) in variants.items()}, device, 2, repeats)
    step = interleaved_median_seconds({k: s for k, (_, s) in variants.items()}, device, 2, repeats)
    peak = {k: peak_allocated_bytes(s, device) for k, (_, s) in variants.items()}
    return {k: (forward[k], step[k], peak[k]) for k in variants}


def _speedups(row, times, label, compile_reference):
    forward, step, peak = times[label]
    row.update(forward_ms=forward * 1e3, ms=step * 1e3, peak_mb=peak / 2**20,
               speedup=times["reference"][1] / step, forward_speedup=times["reference"][0] / forward,
               speedup_vs_compiled=times["compile(reference)"][1] / step if compile_reference else None,
               memory_reduction=times["reference"][2] / peak)
    return row


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
            runs, saved = {}, {}
            for label, (backend, compiled) in variants.items():
                torch.manual_seed(0)
                module = RGAModule(c, h * w, *BRANCHES[branch], backend=backend).to(device)
                run = _compiled(module) if compiled else module
                runs[label] = ((lambda run: lambda: run(x))(run), (lambda run: lambda: run(x).backward(grad))(run))
                _, saved[label] = saved_tensor_bytes(lambda: run(x))
            times = _measure(runs, device, repeats)
            for label in variants:
                row = dict(module=branch, in_channel=c, hw=f"{h}x{w}", batch=batch, variant=label,
                           saved_mb=saved[label] / 2**20, saved_reduction=saved["reference"] / saved[label])
                rows.append(_speedups(row, times, label, compile_reference))
                print(_format_module_row(rows[-1]), flush=True)
    return rows


def _x(value) -> str:
    return f"{value:.2f}x" if value else "-"


def _format_module_row(r) -> str:
    return (f"| {r['module']} | ({r['in_channel']}, {r['hw']}) | {r['variant']} | {r['forward_ms']:.2f} | "
            f"{r['ms']:.2f} | {_x(r['speedup'])} | {_x(r['speedup_vs_compiled'])} | {r['peak_mb']:.1f} | "
            f"{r['memory_reduction']:.1f}x | {r['saved_mb']:.1f} | {r['saved_reduction']:.1f}x |")


def _relation_project_flop(variant, b, c, n, k) -> float:
    """Forward FLOP of the algorithm the variant runs: the reference forms G (2 N^2 C') and
    convolves the stacked [2N, N] relation (4 K N^2); the re-associated form computes the
    coefficients (4 K C' N) and one GEMM with inner size 2C' (4 K C' N). Per item."""
    per_item = 2 * n * n * c + 4 * k * n * n if "reference" in variant else 8 * k * c * n
    return b * per_item


def _op_shapes(stages):
    """(branch, C', N, K) of the relation ops in each stage's spatial and channel branches."""
    for c, h, w in stages:
        yield "spatial", c // 8, h * w, h * w // 8
        yield "channel", h * w // 8, c, c // 8


def _op_rows(device, batch, repeats, compile_reference, stages, write_gbs):
    """relation_project / relation_stack alone at each stage's two relation branches."""
    rows = []
    for branch, ci, n, k in _op_shapes(stages):
        theta = torch.randn(batch, ci, n, device=device, requires_grad=True)
        phi = torch.randn(batch, ci, n, device=device, requires_grad=True)
        weight = torch.randn(k, 2 * n, device=device, requires_grad=True)
        for op in ("relation_project", "relation_stack"):
            args = (theta, phi, weight) if op == "relation_project" else (theta, phi)
            functions = {"reference": getattr(reference, op)}
            if compile_reference:
                functions["compile(reference)"] = _compiled(getattr(reference, op))
            functions.update({b: (lambda b: lambda *a: getattr(rga_ops, op)(*a, backend=b))(b)
                              for b in timed_backends(device)})
            grad = torch.randn_like(functions["reference"](*args))
            variants = {label: ((lambda f: lambda: f(*args))(f), (lambda f: lambda: f(*args).backward(grad))(f))
                        for label, f in functions.items()}
            times = _measure(variants, device, repeats)
            out_bytes = grad.numel() * grad.element_size()
            for label in variants:
                row = dict(op=op, branch=branch, variant=label,
                           shape=f"B={batch}, C'={ci}, N={n}" + (f", K={k}" if op == "relation_project" else ""))
                _speedups(row, times, label, compile_reference)
                forward = times[label][0]
                if op == "relation_project":
                    row.update(forward_tflops=_relation_project_flop(label, batch, ci, n, k) / forward / 1e12)
                else:  # the floor: writing J once at the measured copy bandwidth
                    row.update(forward_gbs=out_bytes / forward / 1e9, write_ms=out_bytes / write_gbs / 1e6,
                               of_write_time=forward / (out_bytes / write_gbs / 1e9))
                rows.append(row)
                print(_format_op_row(row), flush=True)
    return rows


def _format_op_row(r) -> str:
    if "forward_tflops" in r:
        tflops = r["forward_tflops"]
        rate = f"{tflops:.2f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"
    else:
        rate = f"{r['forward_gbs']:.1f} GB/s, {r['of_write_time']:.2f}x the {r['write_ms']:.3f} ms write"
    return (f"| {r['op']} | {r['branch']} | {r['shape']} | {r['variant']} | {r['forward_ms']:.2f} | "
            f"{_x(r['forward_speedup'])} | "
            f"{r['ms']:.2f} | {_x(r['speedup'])} | {_x(r['speedup_vs_compiled'])} | {r['peak_mb']:.1f} | {rate} |")


MODULE_HEADER = ["| module | (C, HxW) | variant | forward ms | fwd+bwd ms | speed-up | vs compiled ref | peak MB | "
                 "less peak | saved MB | less saved |", "|---|---|---|---|---|---|---|---|---|---|---|"]
OP_HEADER = ["| op | branch | shape | variant | forward ms | fwd speed-up | fwd+bwd ms | speed-up | vs compiled ref | "
             "peak MB | forward rate |", "|---|---|---|---|---|---|---|---|---|---|---|"]


def _write(device, stem, command, copy_gbs, module_rows, op_rows):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{stem}.json"), "w") as f:
        json.dump(dict(device=device_description(device), command=command, copy_gbs=copy_gbs, modules=module_rows,
                       ops=op_rows), f, indent=1)
    lines = [f"# Benchmarks on {device_description(device)}", "", f"Command: `{command}`", "",
             f"Copy bandwidth measured in the same run: {copy_gbs:.0f} GB/s (bytes read + written). Timing: "
             "median of interleaved rounds; the forward as in training (autograd records it). Peak MB: allocated "
             "during forward + backward above what existed before. Speed-ups are of forward + backward unless "
             "named.", ""]
    if module_rows:
        lines += ["## RGAModule, float32", "",
                  "Saved MB: activation memory kept for backward (distinct storages captured by "
                  "`torch.autograd.graph.saved_tensors_hooks`).", "", *MODULE_HEADER,
                  *[_format_module_row(r) for r in module_rows], ""]
    if op_rows:
        lines += ["## Relation ops, float32, at each stage's spatial and channel branches", "",
                  "Forward rate: relation_project's FLOP/s of the algorithm the variant runs (the reference "
                  "materialises the relation); relation_stack's bytes of J written per second, and its forward time "
                  "over the time that writing J takes at the measured copy bandwidth.", "", *OP_HEADER,
                  *[_format_op_row(r) for r in op_rows]]
    path = os.path.join(RESULTS, f"{stem}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwrote {path} and .json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on the CPU, 64 on a GPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 5 on the CPU, 20 on a GPU)")
    parser.add_argument("--part", choices=("all", "modules", "ops"), default="all",
                        help="what to run; a part alone is written to results/<device>-<part>.*")
    parser.add_argument("--branches", nargs="+", choices=list(BRANCHES), default=list(BRANCHES),
                        help="RGAModule variants to run (default: all three)")
    parser.add_argument("--quick", action="store_true", help="batch 2, rgasc only, no torch.compile, nothing written")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (2 if args.quick else 64 if gpu else 8)
    repeats = 2 if args.quick else args.repeats or (20 if gpu else 5)
    command = ("python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(f"{device_description(device)}\n")
    # Well beyond the caches: 1 GiB on a GPU, 256 MiB on the CPU.
    copy_gbs = copy_bandwidth(torch.empty(2**28 if gpu else 2**26, device=device).normal_()) / 1e9
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s\n")
    branches = ["rgasc"] if args.quick else args.branches
    module_rows, op_rows = [], []
    if args.part in ("all", "modules"):
        print("\n".join(MODULE_HEADER), flush=True)
        module_rows = _module_rows(device, batch, repeats, not args.quick, branches, STAGES)
    if args.part in ("all", "ops"):
        print("\n" + "\n".join(OP_HEADER), flush=True)
        op_rows = _op_rows(device, batch, repeats, not args.quick, STAGES, copy_gbs)
    if not args.quick:
        stem = device_name(device) + ("" if args.part == "all" else f"-{args.part}")
        if args.part != "ops" and branches != list(BRANCHES):
            stem += "-" + "-".join(branches)
        _write(device, stem, command, copy_gbs, module_rows, op_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
