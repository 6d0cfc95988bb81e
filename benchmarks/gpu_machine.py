"""`python -m benchmarks.gpu_machine`: the versions this machine runs against those the GPU
validation plan expects (benchmarks/gpu_machine.env), one line each, and whether they match.
Never fails: a difference is for the reader of the plan's log (then update gpu_machine.env)."""

from __future__ import annotations

import importlib.metadata
import os
import platform

ENV_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_machine.env")
# gpu_machine.env's name -> the package (or "python") whose version it gives.
PACKAGES = {"GPU_PYTHON": "python", "GPU_TORCH": "torch", "GPU_TRITON": "triton", "GPU_TORCHVISION": "torchvision"}


def expected_versions(path: str = ENV_FILE) -> dict[str, str]:
    """name -> version, from the KEY=VALUE lines of gpu_machine.env."""
    with open(path) as f:
        pairs = (line.strip().split("=", 1) for line in f if "=" in line and not line.lstrip().startswith("#"))
        return {key: value for key, value in pairs}


def installed_version(package: str) -> str | None:
    """The release (without a local build tag such as +cu130) installed here; Python's as major.minor."""
    if package == "python":
        return ".".join(platform.python_version().split(".")[:2])
    try:
        return importlib.metadata.version(package).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> int:
    expected = expected_versions()
    differ = []
    for key, package in PACKAGES.items():
        here = installed_version(package)
        same = here == expected.get(key)
        differ += [] if same else [package]
        print(f"{package:<12} {here or 'not installed':<10} expected {expected.get(key)}{'' if same else '  <- differs'}")
    print("as gpu_machine.env says" if not differ else
          f"{', '.join(differ)} differ from benchmarks/gpu_machine.env: if this is the GPU machine, update that file")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
