"""`python -m benchmarks.run`: every benchmark of the project, side by side, with tables and plots.

Part `modules`: for every RGA-Net stage shape and branch (rgasc, rgas, rgac), RGAModule in
float32: the reference (eager, and torch.compile'd unless --quick or --no-compile) and each of
our usable backends on the device. Part `ops`, with the same variants: relation_project and
relation_stack at each stage's spatial (C' = C/8, N = H*W, K = N/8) and channel (C' = H*W/8,
N = C, K = C/8) branches, batch_norm_relu_conv1x1 at each stage's attention heads, ha_soft_gate
at HA-CNN's stages (benchmarks.op_cases, benchmarks.shapes). Columns: median time of the
forward (as in training: autograd records it) and of forward + backward, speed-ups against the
reference eager and compiled, peak memory allocated during forward + backward (and, for the
module, the activation memory kept for backward); for the ops the forward's rate (GFLOP/s of
the algorithm the variant runs, or GB/s of the bytes it must move) as a fraction of what the
machine attains, measured in the same run: a float32 GEMM's FLOP/s for the GEMM-bound ops, the
copy bandwidth for the memory-bound ones. Timing: interleaved rounds, CUDA events on a GPU
(rga_ops.profiling). Writes benchmarks/results/<device>.json, .md and .png (speed-up plots), or
`<device>-<part>[-<branches>]` for a part of it, with the command that produced them.
Parts `models` (benchmarks.models: training steps and inference of the networks) and `memory`
(benchmarks.memory_scaling: memory against input size) write their own files.
`--quick` (about a minute on a 2-core CPU) runs a little of each part and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from rga_ops.nn import RGAModule
from rga_ops.profiling import (copy_bandwidth, gemm_flops_per_second, interleaved_median_seconds,
                               peak_allocated_bytes, saved_tensor_bytes)
from rga_ops.testing import BRANCHES, STAGES

from . import memory_scaling, models, op_cases
from .device import device_description, device_name, timed_backends
from .plots import plot_speedups
from .shapes import HA_SHAPES, head_shapes, relation_shapes

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


def _op_rows(op, branch, case, repeats, device, compile_reference, attainable):
    """Times the case's functions side by side, torch.compile(reference) after the reference when
    asked; the forward rate (FLOP/s or B/s) as a fraction of `attainable` (the GEMM rate or the
    copy bandwidth)."""
    functions = dict(case.functions)
    if compile_reference:
        functions = {"reference": functions.pop("reference"),
                     "compile(reference)": _compiled(case.functions["reference"]), **functions}
    variants = {label: ((lambda f: lambda: f(*case.args))(f), (lambda f: lambda: f(*case.args).backward(case.grad))(f))
                for label, f in functions.items()}
    times = _measure(variants, device, repeats)
    rows = []
    for label in variants:
        row = dict(op=op, branch=branch, variant=label, shape=case.shape)
        _speedups(row, times, label, compile_reference)
        per_second = case.forward_work(label) / times[label][0]
        row.update(rate=per_second / 1e9, rate_unit="GFLOP/s" if case.unit == "FLOP" else "GB/s",
                   of_attainable=per_second / attainable)
        rows.append(row)
        print(_format_op_row(row), flush=True)
    return rows


def _all_op_rows(device, batch, repeats, compile_reference, stages, ha_batch, ha_shapes, copy_gbs, gemm_flops):
    """relation_project and relation_stack at each stage's two relation branches, batch_norm_relu_conv1x1
    at its two attention heads, ha_soft_gate at HA-CNN's stages."""
    rows = []
    for branch, ci, n, k in relation_shapes(stages):
        for op in ("relation_project", "relation_stack"):
            case = op_cases.relation_case(op, batch, ci, n, k, device)
            rows += _op_rows(op, branch, case, repeats, device, compile_reference,
                             gemm_flops if case.unit == "FLOP" else copy_gbs * 1e9)
    for branch, k, m, hidden in head_shapes(stages):
        case = op_cases.head_case(batch, k, m, hidden, device)
        if case is not None:
            rows += _op_rows("batch_norm_relu_conv1x1", branch, case, repeats, device, compile_reference, gemm_flops)
    for c, h, w in ha_shapes:
        rows += _op_rows("ha_soft_gate", "HA-CNN", op_cases.ha_gate_case(ha_batch, c, h, w, device), repeats, device,
                         compile_reference, copy_gbs * 1e9)
    return rows


def _format_op_row(r) -> str:
    rate = f"{r['rate'] / 1e3:.2f} TFLOP/s" if r["rate_unit"] == "GFLOP/s" and r["rate"] >= 1e3 else \
        f"{r['rate']:.1f} {r['rate_unit']}"
    return (f"| {r['op']} | {r['branch']} | {r['shape']} | {r['variant']} | {r['forward_ms']:.2f} | "
            f"{_x(r['forward_speedup'])} | "
            f"{r['ms']:.2f} | {_x(r['speedup'])} | {_x(r['speedup_vs_compiled'])} | {r['peak_mb']:.1f} | {rate} | "
            f"{r['of_attainable']:.0%} |")


MODULE_HEADER = ["| module | (C, HxW) | variant | forward ms | fwd+bwd ms | speed-up | vs compiled ref | peak MB | "
                 "less peak | saved MB | less saved |", "|---|---|---|---|---|---|---|---|---|---|---|"]
OP_HEADER = ["| op | branch | shape | variant | forward ms | fwd speed-up | fwd+bwd ms | speed-up | vs compiled ref | "
             "peak MB | forward rate | of attainable |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
OP_SECTIONS = {
    "relation_project": "relation_project at each stage's spatial and channel branches: GFLOP/s of the algorithm the "
                        "variant runs (the reference materialises the relation and convolves it), of the GEMM rate.",
    "relation_stack": "relation_stack at each stage's spatial and channel branches: GB/s of J written, of the copy "
                      "bandwidth (1 / that is the forward time over the time writing J once takes).",
    "batch_norm_relu_conv1x1": "batch_norm_relu_conv1x1 at each stage's spatial and channel attention head (x: the "
                               "relation [B, K, M]; training mode). Reference: F.batch_norm + ReLU + matmul. GFLOP/s "
                               "of the 1x1 conv's GEMM, of the GEMM rate.",
    "ha_soft_gate": "ha_soft_gate (the whole op from s and c, training mode) at HA-CNN's three stages. Reference: "
                    "torchreid's computation (rank-1 tensor, C x C conv per pixel, BN, ReLU, sigmoid). GB/s of x read "
                    "+ out written, of the copy bandwidth.",
}


def _write(device, stem, command, roofline, module_rows, op_rows, compile_note):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{stem}.json"), "w") as f:
        json.dump(dict(device=device_description(device), command=command, **roofline, modules=module_rows,
                       ops=op_rows), f, indent=1)
    plot = plot_speedups(module_rows, op_rows, os.path.join(RESULTS, f"{stem}.png"), device_description(device))
    lines = [f"# Benchmarks on {device_description(device)}", "", f"Command: `{command}`", "",
             f"Attainable, measured in the same run: float32 GEMM {roofline['gemm_gflops']:.0f} GFLOP/s "
             f"({roofline['gemm_shape']}), copy bandwidth {roofline['copy_gbs']:.0f} GB/s (bytes read + written). "
             "Timing: median of interleaved rounds; the forward as in training (autograd records it). Peak MB: "
             "allocated during forward + backward above what existed before. Speed-ups are of forward + backward "
             f"unless named. {compile_note}", ""]
    if plot:
        lines += [f"![speed-ups]({os.path.basename(plot)})", ""]
    if module_rows:
        lines += ["## RGAModule, float32", "",
                  "Saved MB: activation memory kept for backward (distinct storages captured by "
                  "`torch.autograd.graph.saved_tensors_hooks`).", "", *MODULE_HEADER,
                  *[_format_module_row(r) for r in module_rows], ""]
    for op, text in OP_SECTIONS.items():
        rows = [r for r in op_rows if r["op"] == op]
        if rows:
            lines += [f"## {op}, float32", "", text, "", *OP_HEADER, *[_format_op_row(r) for r in rows], ""]
    path = os.path.join(RESULTS, f"{stem}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"\nwrote {path}, .json and .png")


PARTS = ("modules", "ops", "models", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on the CPU, 64 on a GPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 5 on the CPU, 20 on a GPU)")
    parser.add_argument("--part", choices=("all", *PARTS), default="all",
                        help="what to run; a part alone is written to results/<device>-<part>.* (models and memory "
                             "always to their own files)")
    parser.add_argument("--branches", nargs="+", choices=list(BRANCHES), default=list(BRANCHES),
                        help="RGAModule variants to run (default: all three)")
    parser.add_argument("--no-compile", action="store_true", help="leave out torch.compile(reference)")
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: batch 2, the third stage and rgasc only, one HA-CNN shape, RGA-Net "
                             "inference, the memory sweep of the module at two sizes, no torch.compile, nothing "
                             "written")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (2 if args.quick else 64 if gpu else 8)
    repeats = 2 if args.quick else args.repeats or (20 if gpu else 5)
    compile_reference = not (args.quick or args.no_compile)
    command = ("python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    parts = PARTS if args.part == "all" else (args.part,)
    print(f"{device_description(device)}\n")
    # Well beyond the caches: 1 GiB on a GPU, 256 MiB on the CPU.
    copy_gbs = copy_bandwidth(torch.empty(2**28 if gpu else 2**26, device=device).normal_()) / 1e9
    gemm_n = 8192 if gpu else 2048
    gemm_flops = gemm_flops_per_second(device, gemm_n)
    roofline = dict(copy_gbs=copy_gbs, gemm_gflops=gemm_flops / 1e9,
                    gemm_shape=f"[{gemm_n}, {gemm_n}] x [{gemm_n}, {gemm_n}]")
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s, float32 GEMM: {gemm_flops / 1e9:.0f} GFLOP/s\n")
    branches = ["rgasc"] if args.quick else args.branches
    stages = STAGES[2:3] if args.quick else STAGES
    module_rows, op_rows = [], []
    if "modules" in parts:
        print("\n".join(MODULE_HEADER), flush=True)
        module_rows = _module_rows(device, batch, repeats, compile_reference, branches, stages)
    if "ops" in parts:
        print("\n" + "\n".join(OP_HEADER), flush=True)
        op_rows = _all_op_rows(device, batch, repeats, compile_reference, stages, batch if args.quick else 32,
                               HA_SHAPES[:1] if args.quick else HA_SHAPES, copy_gbs, gemm_flops)
    if not args.quick and (module_rows or op_rows):
        stem = device_name(device) + ("" if args.part == "all" else f"-{args.part}")
        if args.part in ("all", "modules") and branches != list(BRANCHES):
            stem += "-" + "-".join(branches)
        note = ("torch.compile(reference): compiled afresh per shape; its compile time is not in the timings."
                if compile_reference else "torch.compile(reference) left out (--no-compile).")
        _write(device, stem, command, roofline, module_rows, op_rows, note)
    if "models" in parts:
        print()
        models.main(["--device", str(device), "--quick"] if args.quick
                    else ["--device", str(device)] + (["--batch", str(args.batch)] if args.batch else []))
    if "memory" in parts:
        print()
        memory_scaling.main(["--device", str(device), "--sizes", "2", "--parts", "module", "--dry-run"]
                            if args.quick else ["--device", str(device)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
