"""Checkpoints: plain dicts of tensors and Python values, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

_MODULE_PREFIX = "module."


def unwrapped_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without DDP's `module.` prefixes."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return inner.state_dict()


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without a leading `module.` (state_dicts saved from a DDP-wrapped model by other tools)."""
    return {k.removeprefix(_MODULE_PREFIX): v for k, v in state_dict.items()}


def save_checkpoint(path: str | os.PathLike, payload: Mapping) -> None:
    """Write `payload` to `path` so that `path` is always either the old file or the complete new one.

    The file is written to a temporary name in the same folder, flushed to disk, then renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by `save_checkpoint` (or any weights-only-loadable dict with a `state_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a checkpoint of this project (a dict with a 'state_dict' entry)")
    checkpoint["state_dict"] = strip_module_prefix(checkpoint["state_dict"])
    return checkpoint
