"""`python -m benchmarks.models`: RGA-Net and HA-CNN, ours against the reference formulations.

Training step (forward, backward, optimiser step) and inference (eval-mode forward
under inference_mode, and our folded model), float32, batch 8 on the CPU and 64 on a
GPU:
  RGA-Net 256x128  ResNet-50 baseline (the same network without RGA) | RGA-SC, RGA-S and
                   RGA-C, each with our kernels (backend "auto") and with backend="reference"
                   (materialised relations, as the authors' code computes them); speed-ups
                   of each against its own reference, the baseline's against RGA-SC's. Loss: label-smoothing
                   cross-entropy on the logits + batch-hard triplet on feat_; Adam.
  HA-CNN 160x64    torchreid's computation (models.networks.reference_hacnn) | ours (fused soft
                   gate, batched regions). Loss: cross-entropy on both logits; SGD momentum.
Every variant of a table runs once per round, rounds interleaved, so that the drift of a
shared machine hits all alike. Ratios are reported as medians of the per-round ratios and
as ratios of the fastest runs (least disturbed by other work on the machine). Activation
memory: distinct storages kept for backward (saved_tensors_hooks), per image. Writes
benchmarks/results/models-<device>.json and .md with the command that produced them."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.inference.fold import fold_for_inference
from models.networks.hacnn import HACNN
from models.networks.reference_hacnn import ReferenceHACNN
from models.networks.rganet import RGANet
from rga_ops.profiling import interleaved_seconds, saved_tensor_bytes

from .device import device_description, device_name

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# The targets on the CPU, batch 8 at 256x128: RGA-SC (ours) step time against the
# baseline's and the reference's, and activation memory per image.
TARGETS = {"step vs baseline": 1.4, "speed-up vs reference": 3.5, "saved MB per image": 130.0}
BRANCH_NAMES = {"rgasc": "RGA-SC", "rgas": "RGA-S", "rgac": "RGA-C"}


def _rganet_loss(outputs, labels: torch.Tensor) -> torch.Tensor:
    feat_, _, logits = outputs
    dist = torch.cdist(feat_, feat_)
    same = labels[:, None] == labels[None, :]
    hardest_positive = (dist * same).max(1).values
    hardest_negative = dist.masked_fill(same, float("inf")).min(1).values
    triplet = F.relu(hardest_positive - hardest_negative + 0.3).mean()
    return F.cross_entropy(logits, labels, label_smoothing=0.1) + triplet


def _hacnn_loss(outputs, labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(logits, labels) for logits in outputs)


def _training_step(model, x, labels, loss_fn, optimizer) -> Callable[[], None]:
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), labels).backward()
        optimizer.step()
    return step


def _inference(model, x) -> Callable[[], None]:
    def run():
        with torch.inference_mode():
            model(x)
    return run


def _saved_mb_per_image(model, x) -> float:
    model.train()
    _, saved = saved_tensor_bytes(lambda: model(x))
    return saved / x.shape[0] / 2**20


def _rows(table: str, times: dict[str, list[float]], base: str, reference: str | dict[str, str] | None, batch: int,
          saved: dict[str, float] | None = None) -> list[dict]:
    """One row per variant: median and fastest time; the ratio to `base` and the speed-up from
    `reference` (one variant for all, or per variant: its own reference; none for the others),
    each as the median of the per-round ratios and as the ratio of the fastest runs (the
    estimate least disturbed by other work on a shared machine)."""
    rows = []
    for name, t in times.items():
        own = reference.get(name) if isinstance(reference, dict) else reference
        ref = times[own] if own else None
        row = dict(table=table, variant=name, batch=batch, ms=statistics.median(t) * 1e3, min_ms=min(t) * 1e3,
                   vs_base=statistics.median(a / b for a, b in zip(t, times[base])),
                   vs_base_fastest=min(t) / min(times[base]),
                   speedup=statistics.median(r / a for a, r in zip(t, ref)) if ref else None,
                   speedup_fastest=min(ref) / min(t) if ref else None,
                   saved_mb_per_image=saved.get(name) if saved else None, seconds=t)
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def _rganet_inference_table(device, batch, repeats, classes=751):
    """RGA-Net inference alone (what `--quick` runs): the baseline, RGA-SC ours and the reference."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 256, 128, device=device)
    runs = {"ResNet-50 baseline": RGANet(classes, "baseline"), "RGA-SC ours": RGANet(classes),
            "RGA-SC reference": RGANet(classes, backend="reference")}
    runs = {name: _inference(m.to(device).eval(), x) for name, m in runs.items()}
    return _rows("RGA-Net inference", interleaved_seconds(runs, device, 1, repeats), "ResNet-50 baseline",
                 "RGA-SC reference", batch)


def _rganet_tables(device, batch, repeats, classes=751):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 256, 128, device=device)
    labels = torch.arange(batch, device=device) // 4 % classes  # 4 images per identity, as the sampler gives
    variants = {"ResNet-50 baseline": RGANet(classes, "baseline")}
    references = {"ResNet-50 baseline": "RGA-SC reference"}
    for branch, name in BRANCH_NAMES.items():
        variants[f"{name} ours"] = RGANet(classes, branch)
        variants[f"{name} reference"] = RGANet(classes, branch, backend="reference")
        references[f"{name} ours"] = references[f"{name} reference"] = f"{name} reference"
    for model in variants.values():
        model.to(device)
    saved = {name: _saved_mb_per_image(m, x) for name, m in variants.items()}
    steps = {name: _training_step(m, x, labels, _rganet_loss, torch.optim.Adam(m.parameters(), lr=3e-4))
             for name, m in variants.items()}
    train = _rows("RGA-Net training step", interleaved_seconds(steps, device, 1, repeats), "ResNet-50 baseline",
                  references, batch, saved)
    for m in variants.values():
        m.eval()
    runs = {}
    for name, model in variants.items():
        runs[name] = model
        if not name.endswith("reference"):
            runs[f"{name} folded"] = fold_for_inference(model)
            references[f"{name} folded"] = references[name]
    infer = _rows("RGA-Net inference", interleaved_seconds({n: _inference(m, x) for n, m in runs.items()}, device,
                                                           1, repeats), "ResNet-50 baseline", references, batch)
    return train + infer


def _hacnn_tables(device, batch, repeats, classes=751):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 160, 64, device=device)
    labels = torch.arange(batch, device=device) % classes
    reference = ReferenceHACNN(classes).to(device)
    ours = HACNN(classes).to(device)
    ours.load_state_dict(reference.state_dict())
    variants = {"HA-CNN reference (torchreid)": reference, "HA-CNN ours": ours}
    saved = {name: _saved_mb_per_image(m, x) for name, m in variants.items()}
    steps = {name: _training_step(m, x, labels, _hacnn_loss, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))
             for name, m in variants.items()}
    first = "HA-CNN reference (torchreid)"
    train = _rows("HA-CNN training step", interleaved_seconds(steps, device, 1, repeats), first, first, batch, saved)
    for m in variants.values():
        m.eval()
    runs = {**variants, "HA-CNN ours folded": fold_for_inference(ours)}
    infer = _rows("HA-CNN inference", interleaved_seconds({n: _inference(m, x) for n, m in runs.items()}, device, 1,
                                                          repeats), first, first, batch)
    return train + infer


def _format_row(r) -> str:
    speedup = f"{r['speedup']:.2f}x | {r['speedup_fastest']:.2f}x" if r["speedup"] is not None else "- | -"
    saved = f"{r['saved_mb_per_image']:.1f}" if r["saved_mb_per_image"] is not None else "-"
    return (f"| {r['table']} | {r['variant']} | {r['batch']} | {r['ms']:.0f} | {r['min_ms']:.0f} | "
            f"{r['vs_base']:.2f} | {r['vs_base_fastest']:.2f} | {speedup} | {saved} |")


def _targets(rows) -> list[tuple[str, float, float, float, bool, bool]]:
    """(what, measured as median of per-round ratios, as ratio of fastest runs, target, met by each)."""
    step = {r["variant"]: r for r in rows if r["table"] == "RGA-Net training step"}
    ours = step["RGA-SC ours"]
    at_most = lambda v, t: v <= t  # noqa: E731
    at_least = lambda v, t: v >= t  # noqa: E731
    checks = [("RGA-SC ours step time / baseline's (at most)", ours["vs_base"], ours["vs_base_fastest"],
               TARGETS["step vs baseline"], at_most),
              ("RGA-SC reference step time / ours (at least)", ours["speedup"], ours["speedup_fastest"],
               TARGETS["speed-up vs reference"], at_least),
              ("RGA-SC ours activations kept for backward, MB per image (at most)", ours["saved_mb_per_image"],
               ours["saved_mb_per_image"], TARGETS["saved MB per image"], at_most)]
    return [(what, median, fastest, target, ok(median, target), ok(fastest, target))
            for what, median, fastest, target, ok in checks]


HEADER = ["| table | variant | batch | median ms | fastest ms | time / first row's (median) | (fastest) | "
          "speed-up vs reference (median) | (fastest) | saved MB per image |",
          "|---|---|---|---|---|---|---|---|---|---|"]


def _write(device, command, rows, repeats):
    name = device_name(device)
    targets = _targets(rows)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"models-{name}.json"), "w") as f:
        json.dump(dict(device=device_description(device), command=command, repeats=repeats, rows=rows,
                       targets=[dict(what=w, median_ratio=m, fastest_ratio=q, target=t, met_median=a, met_fastest=b)
                                for w, m, q, t, a, b in targets]), f, indent=1)
    lines = [f"# Models on {device_description(device)}", "", f"Command: `{command}`", "",
             f"float32, {repeats} interleaved rounds (one run of each variant of a table per round); times per "
             "batch. Ratios to the table's first row and speed-ups from the reference (the reference's time over "
             "the row's; each RGA variant against its own reference, the baseline against RGA-SC's) are given "
             "twice: \"median\", the median of the per-round ratios, and \"fastest\", the "
             "ratio of the fastest runs, the estimate least disturbed by other work on a shared machine. Saved MB "
             "per image: distinct storages kept for backward by the training forward (`saved_tensors_hooks`). "
             "Inference: eval-mode forward under `torch.inference_mode()`; \"folded\" is "
             "`models.inference.fold.fold_for_inference`. Per-round times are in the .json.", "",
             *HEADER, *[_format_row(r) for r in rows], ""]
    if device.type == "cpu":
        lines += ["## Targets (CPU, batch 8, 256x128, forward + backward + Adam)", "",
                  "| what | median of per-round ratios | ratio of fastest runs | target | met (median) | "
                  "met (fastest) |", "|---|---|---|---|---|---|",
                  *[f"| {w} | {m:.2f} | {q:.2f} | {t:g} | {'yes' if a else 'NO'} | {'yes' if b else 'NO'} |"
                    for w, m, q, t, a, b in targets]]
    path = os.path.join(RESULTS, f"models-{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwrote {path} and .json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on the CPU, 64 on a GPU")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--only", choices=["rganet", "hacnn"], default=None, help="one network, nothing written")
    parser.add_argument("--quick", action="store_true", help="RGA-Net inference only, batch 2, one round, nothing "
                                                             "written")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (8 if device.type == "cpu" else 64)
    command = ("python -m benchmarks.models " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    print(f"{device_description(device)}\n\n" + "\n".join(HEADER))
    if args.quick:
        _rganet_inference_table(device, args.batch or 2, 1)
        return 0
    rows = []
    if args.only in (None, "rganet"):
        rows += _rganet_tables(device, batch, args.repeats)
    if args.only in (None, "hacnn"):
        rows += _hacnn_tables(device, batch, args.repeats)
    if args.only is None:
        _write(device, command, rows, args.repeats)
        if device.type == "cpu":
            for what, median, fastest, target, met_median, met_fastest in _targets(rows):
                print(f"{what}: {median:.2f} (median of per-round ratios, {'met' if met_median else 'MISSED'}), "
                      f"{fastest:.2f} (fastest runs, {'met' if met_fastest else 'MISSED'}); target {target:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
