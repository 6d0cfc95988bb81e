"""Loading a trained re-id network from a file: this project's checkpoints, the official RGA code's
`checkpoint_*.pth.tar` and torchreid's HA-CNN checkpoints (`model.pth.tar-N`), whatever wrapper
they use: a bare state_dict, or a dict holding it under `state_dict` / `model`, keys with or
without DataParallel's `module.` prefix.

This project's checkpoints carry their configuration (network, input size, metric). Other
projects' files hold only weights: the network is recognised from the keys (RGA-Net's
`backbone.rga_att*` with spatial and/or channel heads, HA-CNN's `classifier_global`), the number
of identities from the classifier, the RGA ratios from the module shapes; the input size is
given (`height`, `width`: RGA-Net is built for one size, 256x128 when not given)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..engine.checkpoint import strip_module_prefix
from ..engine.zoo import MODEL_NAMES, RGANET_BRANCHES, build_model, default_size

_WRAPPERS = ("state_dict", "model", "model_state_dict", "net")


class CheckpointError(ValueError):
    """A file that holds no loadable network, or one that does not fit the network asked for."""


@dataclass
class LoadedModel:
    """A network in eval mode with what is needed to use it.

    `source`: "rga_ops" (this project's checkpoint), "rga-official" or "torchreid";
    `config`: the training configuration for this project's checkpoints, else None;
    `metric`: the distance its evaluation uses ("cosine" unless the checkpoint says otherwise)."""

    model: nn.Module
    objective: object
    name: str
    height: int
    width: int
    num_classes: int
    source: str
    metric: str = "cosine"
    config: object | None = None
    epoch: int | None = None


def read_checkpoint_file(path: str | os.PathLike, trust: bool = False) -> object:
    """torch.load of `path` with weights_only=True; `trust` allows arbitrary pickled objects (only for files
    from a source you trust: unpickling can run code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds Python objects besides tensors and plain values (e.g. numpy scalars saved by older "
            f"training code), which torch.load refuses with weights_only=True: {str(error).splitlines()[0]}. "
            "If you trust where the file comes from, load it with trust=True (the CLI's --trust-checkpoint)") from None


def _state_dict_of(payload: object, path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    if not isinstance(payload, Mapping) or not payload or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise CheckpointError(f"{path}: no state_dict found (a mapping of names to tensors, bare or under one of "
                              f"{', '.join(repr(k) for k in _WRAPPERS)})")
    return strip_module_prefix(payload)


def recognise(state: Mapping[str, torch.Tensor]) -> str:
    """The model name (one of MODEL_NAMES) whose state_dict `state` is, from its keys."""
    if "classifier_global.weight" in state:
        return "hacnn"
    if "cls.weight" in state and any(k.startswith("backbone.") for k in state):
        spatial = any(k.startswith("backbone.rga_att1.W_spatial.") for k in state)
        channel = any(k.startswith("backbone.rga_att1.W_channel.") for k in state)
        branch = {(True, True): "rgasc", (True, False): "rgas", (False, True): "rgac"}.get((spatial, channel))
        if branch is None:
            raise CheckpointError("an RGA-Net state_dict without RGA modules (the baseline) is not a model of this "
                                  "project's zoo")
        return next(name for name, b in RGANET_BRANCHES.items() if b == branch)
    raise CheckpointError("not an RGA-Net (backbone.*, cls.weight) or HA-CNN (classifier_global.*) state_dict")


def _rga_ratios(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(scale, d_scale) of RGA-Net's first module (256 channels) from its shapes: the channel ratio from
    the output channels of the spatial branch's embedding or of the channel branch's relation conv
    (both 256 // ratio), the down ratio from the first head conv (its inputs // its outputs)."""
    prefix = "backbone.rga_att1."
    embedding = state.get(prefix + "gx_spatial.0.weight", state.get(prefix + "gg_channel.0.weight"))
    head = state.get(prefix + "W_spatial.0.weight", state.get(prefix + "W_channel.0.weight"))
    if embedding is None or head is None:
        return 8, 8
    return max(256 // embedding.shape[0], 1), max(head.shape[1] // head.shape[0], 1)


def load_model(path: str | os.PathLike, model: str | None = None, height: int | None = None,
               width: int | None = None, *, scale: int | None = None, d_scale: int | None = None,
               backend: str = "auto", trust: bool = False) -> LoadedModel:
    """The network saved at `path` (see the module's docstring), in eval mode on the CPU.

    `model` (one of MODEL_NAMES), `height`, `width`, `scale`, `d_scale` override what the file
    implies; for other projects' files they are what the file cannot say. A mismatch between the
    file and the network raises CheckpointError listing the keys or shapes that differ."""
    path = Path(path)
    payload = read_checkpoint_file(path, trust)
    if model is not None and model not in MODEL_NAMES:
        raise CheckpointError(f"unknown model {model!r}; choose one of {MODEL_NAMES}")
    if isinstance(payload, Mapping) and isinstance(payload.get("config"), Mapping) and "num_classes" in payload:
        from ..engine.config import TrainConfig

        config = TrainConfig.from_dict(dict(payload["config"])).resolved()
        name, source = model or config.model, "rga_ops"
        height, width = height or config.height, width or config.width
        scale, d_scale = scale or config.scale, d_scale or config.d_scale
        num_classes, metric, epoch = int(payload["num_classes"]), config.metric, payload.get("epoch")
        state = strip_module_prefix(payload["state_dict"])
    else:
        config, metric = None, "cosine"
        epoch = payload.get("epoch") if isinstance(payload, Mapping) else None
        state = _state_dict_of(payload, path)
        found = recognise(state)
        if model is not None and model != found:
            raise CheckpointError(f"{path} holds a {found} state_dict, not {model}")
        name = found
        source = "torchreid" if name == "hacnn" else "rga-official"
        classifier = state["classifier_global.weight" if name == "hacnn" else "cls.weight"]
        num_classes = int(classifier.shape[0])
        if name != "hacnn":
            inferred = _rga_ratios(state)
            scale, d_scale = scale or inferred[0], d_scale or inferred[1]
    default_height, default_width = default_size(name)
    height, width = height or default_height, width or default_width
    built = build_model(name, num_classes, height, width, backend, scale=scale or 8, d_scale=d_scale or 8)
    _load_strictly(built.model, state, path, name, height, width)
    built.model.eval()
    return LoadedModel(built.model, built.objective, name, height, width, num_classes, source, metric, config,
                       int(epoch) if isinstance(epoch, (int, float)) else None)


def _load_strictly(network: nn.Module, state: Mapping[str, torch.Tensor], path: Path, name: str, height: int,
                   width: int) -> None:
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"{path} does not fit {name} at {height}x{width}:"]
        for what, keys in (("missing from the file", missing), ("not in the model", unexpected),
                           ("with another shape", mismatched)):
            if keys:
                lines.append(f"  {len(keys)} {what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        if mismatched and name != "hacnn":
            lines.append("  RGA modules are sized for the input: give the height and width it was trained at "
                         "(--height/--width), and --scale/--d-scale if they differ from what the file implies")
        raise CheckpointError("\n".join(lines))
    network.load_state_dict(state)
