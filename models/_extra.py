"""The `reid` extra that models/ needs beyond torch: one clear line when it is missing."""

from __future__ import annotations

import importlib.util

# import name -> pip name
REID_EXTRA = {"torchvision": "torchvision", "PIL": "pillow", "tqdm": "tqdm", "matplotlib": "matplotlib"}


def missing_reid_packages() -> list[str]:
    """The pip names of the reid extra's packages that cannot be imported here."""
    return [pip for module, pip in REID_EXTRA.items() if importlib.util.find_spec(module) is None]


def reid_extra_message(missing: list[str]) -> str:
    return (f"python -m models needs the reid extra ({', '.join(missing)} not installed): "
            f"pip install -e \".[reid]\" in a checkout, or pip install \"rga_ops[reid]\"")
