"""`python -m benchmarks.memory_scaling`: memory against input size, ours against the reference.

Input sizes 256x128, 384x192, 512x256, 768x384, 1024x512 (N = H/4 * W/4 = 2048 ... 32768 nodes at
the first stage), batch 2 by default (the network's BNNeck needs two images in training mode),
float32, training mode, one forward + backward:
  module  the first-stage RGA-SC module (256 channels at H/4 x W/4): RGAModule with our kernels
          (backend "auto") against ReferenceRGAModule's computation (backend "reference");
  model   the whole RGA-SC network (RGANet) at that input size, ours against the reference.
Per size and variant: the parameters' bytes, the peak bytes allocated during forward + backward
above what existed before (rga_ops.profiling.peak_allocated_bytes), and the activations kept for
backward (saved_tensors_hooks). A size is run only while the predicted need (parameters, their
gradients and the peak, extrapolated from the two largest sizes already measured as a power of
N) fits in --budget-gib: beyond that the row says "does not fit" with the prediction. Each
variant's growth exponent (log peak / log N between its measured sizes) is reported. On a GPU
the budget defaults to the device's memory and a run that still fails with out-of-memory is
recorded as such. Writes benchmarks/results/memory-<device>.json, .md and .png."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys

import torch

from models.networks.rganet import RGANet
from rga_ops.nn import RGAModule
from rga_ops.profiling import peak_allocated_bytes, saved_tensor_bytes

from .device import device_description, device_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SIZES = ((256, 128), (384, 192), (512, 256), (768, 384), (1024, 512))
VARIANTS = {"ours": "auto", "reference": "reference"}
GIB = 2**30


def _build(part: str, height: int, width: int, backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if part == "module":
        return RGAModule(256, (height // 4) * (width // 4), backend=backend)
    return RGANet(751, "rgasc", height, width, backend=backend)


def _input(part: str, batch: int, height: int, width: int, device) -> torch.Tensor:
    if part == "module":
        return torch.randn(batch, 256, height // 4, width // 4, device=device)
    return torch.randn(batch, 3, height, width, device=device)


def _loss(out) -> torch.Tensor:
    return sum(o.float().sum() for o in out) if isinstance(out, (tuple, list)) else out.float().sum()


def _measure(part, batch, height, width, backend, device) -> dict:
    """Parameters, peak during forward + backward and saved activations, in bytes."""
    module = _build(part, height, width, backend).to(device).train()
    x = _input(part, batch, height, width, device)
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    peak = peak_allocated_bytes(lambda: _loss(module(x)).backward(), device)
    module.zero_grad(set_to_none=True)
    _, saved = saved_tensor_bytes(lambda: module(x))
    return dict(params=params, peak=peak, saved=saved)


def _predict(points: list[tuple[int, float]], n: int) -> float:
    """Power-law extrapolation through the two largest measured (N, value) points."""
    if len(points) < 2:
        return points[-1][1] * (n / points[-1][0]) ** 2  # a single point: assume N^2
    (n0, v0), (n1, v1) = points[-2:]
    exponent = math.log(v1 / v0) / math.log(n1 / n0)
    return v1 * (n / n1) ** exponent


def _exponent(rows: list[dict], key: str) -> float | None:
    measured = [(r["nodes"], r[key]) for r in rows if r["status"] == "ran" and r[key] > 0]
    if len(measured) < 2:
        return None
    (n0, v0), (n1, v1) = measured[0], measured[-1]
    return math.log(v1 / v0) / math.log(n1 / n0)


def sweep(part: str, batch: int, sizes, device, budget: int) -> list[dict]:
    rows = []
    for variant, backend in VARIANTS.items():
        need_points: list[tuple[int, float]] = []
        stopped = False
        for height, width in sizes:
            nodes = (height // 4) * (width // 4)
            row = dict(part=part, variant=variant, input=f"{height}x{width}", nodes=nodes, batch=batch)
            predicted = _predict(need_points, nodes) if need_points else None
            if stopped or (predicted is not None and predicted > budget):
                row.update(status="does not fit", predicted_gib=predicted / GIB, params=0, peak=0, saved=0)
                stopped = True
            else:
                try:
                    row.update(status="ran", **_measure(part, batch, height, width, backend, device))
                except torch.OutOfMemoryError:
                    row.update(status="out of memory", params=0, peak=0, saved=0)
                    stopped = True
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if row["status"] == "ran":
                    need_points.append((nodes, 2 * row["params"] + row["peak"]))
                    row["need_gib"] = need_points[-1][1] / GIB
            rows.append(row)
            print(_format(row), flush=True)
    return rows


def _format(r) -> str:
    if r["status"] != "ran":
        what = (f"does not fit: predicted {r['predicted_gib']:.1f} GiB" if r["status"] == "does not fit"
                else "out of memory")
        return f"| {r['part']} | {r['input']} | {r['nodes']} | {r['variant']} | {what} | | | |"
    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    return (f"| {r['part']} | {r['input']} | {r['nodes']} | {r['variant']} | {mib(r['params'])} | {mib(r['peak'])} | "
            f"{mib(r['saved'])} | {r['need_gib']:.2f} |")


HEADER = ["| part | input | N (stage 1) | variant | parameters MiB | peak fwd+bwd MiB | saved MiB | "
          "need GiB (2 x params + peak) |", "|---|---|---|---|---|---|---|---|"]


def _ratios(rows) -> list[str]:
    lines = []
    for part in dict.fromkeys(r["part"] for r in rows):
        by = {(r["variant"], r["input"]): r for r in rows if r["part"] == part}
        for size in dict.fromkeys(r["input"] for r in rows if r["part"] == part):
            ours, ref = by[("ours", size)], by[("reference", size)]
            if ours["status"] == ref["status"] == "ran":
                lines.append(f"| {part} | {size} | {ref['peak'] / ours['peak']:.1f}x | "
                             f"{ref['saved'] / ours['saved']:.1f}x |")
            elif ours["status"] == "ran":
                lines.append(f"| {part} | {size} | reference {ref['status']} | ours runs |")
        for variant in VARIANTS:
            sub = [r for r in rows if r["part"] == part and r["variant"] == variant]
            peak, saved = _exponent(sub, "peak"), _exponent(sub, "saved")
            if peak is not None:
                lines.append(f"| {part} | growth of {variant}: peak ~ N^{peak:.2f}, saved ~ N^{saved:.2f} | | |")
    return ["| part | input | reference peak / ours | reference saved / ours |", "|---|---|---|---|", *lines]


def plot(rows, path: str, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(dict.fromkeys(r["part"] for r in rows))
    fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.5), squeeze=False)
    titles = {"module": "first-stage RGA-SC module (256 ch, H/4 x W/4)", "model": "RGA-SC network"}
    for ax, part in zip(axes[0], parts):
        for variant, color in zip(VARIANTS, ("tab:blue", "tab:red")):
            sub = [r for r in rows if r["part"] == part and r["variant"] == variant]
            ran = [r for r in sub if r["status"] == "ran"]
            ax.plot([r["nodes"] for r in ran], [(2 * r["params"] + r["peak"]) / GIB for r in ran], "o-",
                    color=color, label=f"{variant}: 2 x params + peak (measured)")
            ax.plot([r["nodes"] for r in ran], [r["saved"] / GIB for r in ran], "s:", color=color,
                    label=f"{variant}: saved for backward")
            over = [r for r in sub if r["status"] == "does not fit"]
            if over and ran:
                ax.plot([ran[-1]["nodes"]] + [r["nodes"] for r in over],
                        [(2 * ran[-1]["params"] + ran[-1]["peak"]) / GIB] + [r["predicted_gib"] for r in over],
                        "x--", color=color, label=f"{variant}: predicted, not run")
        ax.axhline(budget / GIB, color="gray", linestyle="-.", label=f"budget {budget / GIB:g} GiB")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([r["nodes"] for r in rows if r["part"] == part and r["variant"] == "ours"])
        ax.set_xticklabels([f"{r['input']}\nN={r['nodes']}" for r in rows if r["part"] == part
                            and r["variant"] == "ours"], fontsize=7)
        ax.minorticks_off()
        ax.set_ylabel("GiB")
        ax.set_title(f"{titles[part]}, batch {rows[0]['batch']}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(device, command, rows, budget, stem=None) -> str:
    stem = stem or f"memory-{device_name(device)}"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{stem}.json"), "w") as f:
        json.dump(dict(device=device_description(device), command=command, budget_gib=budget / GIB, rows=rows), f,
                  indent=1)
    plot(rows, os.path.join(RESULTS, f"{stem}.png"), budget)
    lines = [f"# Memory against input size on {device_description(device)}", "", f"Command: `{command}`", "",
             f"float32, training mode, batch {rows[0]['batch']}, one forward + backward. Peak: bytes allocated "
             "during forward + backward above what existed before (parameters excluded, their gradients "
             "included). Saved: distinct storages kept for backward (the activations, and the weights that ops such "
             "as conv keep). Need: 2 x parameters + peak, what a training step "
             f"needs at least. Budget: {budget / GIB:g} GiB; a size whose need, extrapolated from the two "
             "largest sizes measured, exceeds it is not run (\"does not fit\", with the prediction). Note that "
             "the RGA module's own parameters grow with N^2 (its spatial-relation embedding convs take N or 2N "
             "channels), so no implementation's total is linear in N.", "", *HEADER, *[_format(r) for r in rows],
             "", "## Ratios and growth", "", *_ratios(rows), "", f"![memory against input size]({stem}.png)"]
    path = os.path.join(RESULTS, f"{stem}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwrote {path}, .json and .png")
    return path


def default_budget(device: torch.device) -> float:
    """GiB: the GPU's memory, or 6 GiB on a CPU (a shared machine's fair share)."""
    return torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else 6.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2, help="at least 2 for the network (BatchNorm1d in training)")
    parser.add_argument("--budget-gib", type=float, default=None, help="default: the GPU's memory, 6 on a CPU")
    parser.add_argument("--parts", nargs="+", choices=("module", "model"), default=["module", "model"])
    parser.add_argument("--sizes", type=int, default=len(SIZES), help="how many of the sizes, smallest first")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    budget = int((args.budget_gib or default_budget(device)) * GIB)
    command = ("python -m benchmarks.memory_scaling " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(f"{device_description(device)}\n\n" + "\n".join(HEADER))
    rows = [r for part in args.parts for r in sweep(part, args.batch, SIZES[:args.sizes], device, budget)]
    if args.dry_run:
        print("\n".join(["", *_ratios(rows)]))
    else:
        write(device, command, rows, budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
