"""Loads the compiled extension rga_ops._C, only when it can run in this process.

An extension built against another torch can crash the interpreter on import, so
the torch version recorded at build time (_build_info.json, written by setup.py)
is compared with the running one first. Nothing here raises: the outcome is in
`STATUS`, which rga_ops.backends() reports.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_REINSTALL = (
    "rebuild it for this environment: `pip install --no-build-isolation --force-reinstall .` "
    "(or `pip install -e .` in a source checkout)"
)


@dataclasses.dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    reason: str
    cuda_kernels: bool = False
    build_info: dict = dataclasses.field(default_factory=dict)


def _load() -> ExtensionStatus:
    spec = importlib.util.find_spec("rga_ops._C")
    if spec is None or spec.origin is None:
        return ExtensionStatus(
            False,
            f"the compiled extension rga_ops._C is not in {_PACKAGE_DIR} (this copy of rga_ops "
            f"was not built); {_REINSTALL}",
        )
    info_path = os.path.join(os.path.dirname(spec.origin), "_build_info.json")
    try:
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        return ExtensionStatus(False, f"cannot read {info_path} ({e}); {_REINSTALL}")
    if info.get("torch") != torch.__version__:
        return ExtensionStatus(
            False,
            f"rga_ops._C was built for torch {info.get('torch')} but this environment runs "
            f"torch {torch.__version__}; {_REINSTALL}",
            build_info=info,
        )
    try:
        importlib.import_module("rga_ops._C")
    except (ImportError, OSError) as e:
        return ExtensionStatus(False, f"importing {spec.origin} failed: {e}; {_REINSTALL}", build_info=info)
    return ExtensionStatus(True, f"built for torch {info['torch']}", bool(info.get("cuda")), info)


STATUS = _load()
