"""`python -m tests.triton.compile_for_gpu [--all-configs] [--dtypes float32,bfloat16] [--jobs N]`:
compiles rga_ops' Triton kernels to sm_90 (H100/H200) machine code on a machine without a GPU.

The interpreter shows what the kernels compute, not that they compile: this runs each op's
launch on CPU tensors with the launches recorded instead of run, then compiles every
recorded kernel with triton's compiler for an sm_90 target (ptxas included) with each
autotuning configuration (or the first), float32 with both dot precisions (exact and TF32),
and checks that the shared memory a block needs fits an H100's 227 KiB. Run without
TRITON_INTERPRET, with whichever triton is to be checked (tests/triton/with_gpu_triton.sh
runs it with the GPU machine's). Prints the triton version, one line per compilation, and
exits with status 1 on any failure."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

SHARED_MEMORY_LIMIT = 227 * 1024  # bytes per block on sm_90


def _record_launches(dtypes):
    import torch

    import rga_ops.triton
    from rga_ops.triton import _library

    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    for module in rga_ops.triton.kernel_modules():
        module.wrap_triton = Recorder
    rga_ops.triton.register("rga_ops_triton_sm90", use_triton_op=False)
    # The launches take CPU tensors here; nothing runs on them.
    _library.STATUS = dataclasses.replace(_library.STATUS, devices=("cpu",))
    ops = torch.ops.rga_ops_triton_sm90
    # float32 dots are exact, or TF32 where torch's float32 matmuls may use it ("high").
    runs = [(dtype, precision) for dtype in dtypes
            for precision in (("highest", "high") if dtype == torch.float32 else ("highest",))]
    saved = torch.get_float32_matmul_precision()
    for dtype, precision in runs:
        torch.set_float32_matmul_precision(precision)
        r = lambda *shape: torch.zeros(shape, dtype=dtype)  # noqa: E731
        ops.relation_stack(r(2, 20, 37), r(2, 20, 37))
        ops.relation_stack_backward(r(2, 74, 37), r(2, 20, 37), r(2, 20, 37))
        theta, phi, weight = r(2, 19, 40), r(2, 19, 40), r(17, 80)
        _, coefficients = ops._relation_project(theta, phi, weight)
        ops.relation_project_backward(r(2, 17, 40), theta, phi, weight, coefficients)
        ops.ha_soft_gate(r(2, 37, 6, 4), r(2, 1, 6, 4), r(2, 37), r(37))
        ops.ha_soft_gate_backward(r(2, 37, 6, 4), r(2, 37, 6, 4), r(2, 1, 6, 4), r(2, 37), r(37))
    torch.set_float32_matmul_precision(saved)
    return launches


def _compilations(launches, all_configs: bool):
    """(name, signature, constexprs, config) per distinct compilation."""
    from triton.runtime.jit import mangle_type

    seen = set()
    for autotuner, args, kwargs in launches:
        fn = autotuner.fn
        values = dict(zip(fn.arg_names, args), **kwargs)
        for config in autotuner.configs if all_configs else autotuner.configs[:1]:
            constexprs = {p.name: {**values, **config.kwargs}[p.name] for p in fn.params if p.is_constexpr}
            signature = {p.name: "constexpr" if p.is_constexpr else mangle_type(values[p.name]) for p in fn.params}
            key = (fn.__name__, tuple(signature.values()), tuple(constexprs.items()), config.num_warps,
                   config.num_stages)
            if key not in seen:
                seen.add(key)
                yield fn, signature, constexprs, config


_COMPILATIONS: list = []  # filled before the worker processes fork, read by index in them


def _compile(index: int) -> tuple[bool, str]:
    """Compiles _COMPILATIONS[index]: (ok, the line to print)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, signature, constexprs, config = _COMPILATIONS[index]
    pointers = ",".join(sorted({t for t in signature.values() if t.startswith("*")}))
    flags = {k: v for k, v in constexprs.items() if k in ("PRECISION",)}
    what = f"{fn.__name__} [{pointers}] {config.kwargs} {flags} warps={config.num_warps} stages={config.num_stages}"
    start = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    except Exception as e:  # noqa: BLE001  (any compiler error is a failure to report)
        return False, f"FAILED {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    shared = compiled.metadata.shared
    ok = shared <= SHARED_MEMORY_LIMIT
    return ok, (f"{'ok' if ok else 'FAILED (shared memory)'} {what}: {shared} B shared, "
                f"{time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all-configs", action="store_true", help="every autotuning configuration, not the first")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16,float64")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes (default: one per CPU)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("run without TRITON_INTERPRET: the interpreter compiles nothing")
        return 2
    import multiprocessing

    import torch
    import triton

    launches = _record_launches([getattr(torch, name) for name in args.dtypes.split(",")])
    _COMPILATIONS[:] = list(_compilations(launches, args.all_configs))
    print(f"triton {triton.__version__}: {len(_COMPILATIONS)} compilations for sm_90 in {args.jobs} processes",
          flush=True)
    failures = 0
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for ok, line in pool.imap(_compile, range(len(_COMPILATIONS))):
            failures += not ok
            print(line, flush=True)
    print(f"{len(_COMPILATIONS) - failures} of {len(_COMPILATIONS)} compiled", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
