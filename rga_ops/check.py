"""`python -m rga_ops.check`: verify every usable backend of RGAModule against the
reference at RGA-Net's stage shapes, then time them side by side.

Verification: float64, training mode, both branches and each alone: output,
running statistics and every gradient against ReferenceRGAModule (relative error
max|diff| / max|ref|, must be <= 1e-6), on the CPU and, where one is visible, on
the GPU. Timing: float32 forward + backward, median of a few runs, and the
activation memory kept for backward. Exits with
status 1 if any check fails."""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from . import backends
from .nn import RGAModule
from .profiling import median_seconds, saved_tensor_bytes
from .testing import BRANCHES, STAGES, compare_with_reference

def _verify(backend_names: list[str], tolerance: float, device: str) -> bool:
    print(f"\nVerification against the reference on {device} (float64, training mode, batch 2; "
          f"tolerance {tolerance:g})")
    ok = True
    for c, h, w in STAGES:
        for branch in BRANCHES:
            errors = compare_with_reference(c, h, w, branch, True, torch.float64, 2, backend_names, device=device)
            cells = []
            for backend, errs in errors.items():
                worst = max(errs, key=errs.get)
                passed = errs[worst] <= tolerance
                ok &= passed
                cells.append(f"{backend} {'ok  ' if passed else 'FAIL'} (max {errs[worst]:.1e})")
            print(f"  {branch:<6} ({c}, {h}x{w}):  " + "   ".join(cells))
    return ok


def _benchmark(backend_names: list[str], batch: int, repeats: int, device: str) -> None:
    where = (torch.cuda.get_device_name(device) if device == "cuda" else
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"\nRGAModule forward + backward, float32, batch {batch}, median of {repeats} ({where})")
    header = f"  {'module':<22} {'backend':<10} {'time ms':>9} {'speed-up':>9} {'saved MB':>9} {'less mem':>9}"
    print(header)
    for branch in ("rgasc", "rgas", "rgac"):
        for c, h, w in STAGES:
            x = torch.randn(batch, c, h, w, device=device, requires_grad=True)
            base = None
            for backend in ["reference", *backend_names]:
                torch.manual_seed(0)
                module = RGAModule(c, h * w, *BRANCHES[branch], backend=backend).to(device)
                _, saved = saved_tensor_bytes(lambda: module(x))
                seconds = median_seconds(lambda: module(x).sum().backward(), x.device, 1, repeats)
                base = base or (seconds, saved)
                print(f"  {branch + f' ({c}, {h}x{w})':<22} {backend:<10} {seconds * 1e3:9.1f} "
                      f"{base[0] / seconds:8.1f}x {saved / 2**20:9.1f} {base[1] / saved:8.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rga_ops.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="batch size of the timing table (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per entry (default 3)")
    parser.add_argument("--no-benchmark", action="store_true", help="verify only")
    args = parser.parse_args(argv)

    print(f"rga_ops on torch {torch.__version__}\n")
    print(backends())
    report = backends()
    ok = True
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        # On the CPU the triton backend is triton's interpreter (tests/triton/ checks it at small shapes).
        usable = [name for name, s in report.items()
                  if name != "reference" and device in s.devices and not (name == "triton" and device == "cpu")]
        ok &= _verify(usable, 1e-6, device)
        if not args.no_benchmark:
            _benchmark(usable, args.batch, args.repeats, device)
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
