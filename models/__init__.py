"""Re-id application on top of rga_ops:

    models.networks    RGA-Net, HA-CNN, the ResNet-50 trunk, torchreid's HA-CNN as the reference
    models.inference   folding for inference, torch.export and ONNX export
    models.data        data sets, the synthetic set, P x K sampler, transforms
    models.engine      configuration and recipes, model zoo, losses, training, checkpoints, DDP
    models.evaluation  distances, CMC / mAP / mINP, re-ranking, ranked lists
    python -m models   the command line (train, eval, extract, search, synthetic)

models.FeatureExtractor, models.load_model and models.register_dataset are the entry points for
Python users (features of pictures, any checkpoint, your own data set).

The modules that moved into models.networks and models.inference are still importable under
their old names (models.rganet, models.hacnn, models.fold, ...), with a DeprecationWarning."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_MOVED = {f"{__name__}.{old}": f"{__name__}.{new}" for old, new in (
    ("rganet", "networks.rganet"), ("hacnn", "networks.hacnn"), ("resnet", "networks.resnet"),
    ("reference_hacnn", "networks.reference_hacnn"), ("backend", "networks.backend"),
    ("fold", "inference.fold"), ("export", "inference.export"),
    ("zoo", "engine.zoo"), ("losses", "engine.losses"), ("objectives", "engine.objectives"))}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a moved module's old name as the module at its new place, with a warning."""

    def find_spec(self, fullname, path, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in _MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {_MOVED[spec.name]}: import it from there", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())

# The names a user reaches for first, imported on first use (so that `import models` stays light).
_PUBLIC = {"FeatureExtractor": "inference.extract", "load_model": "inference.loading",
           "register_dataset": "data.datasets", "load_dataset": "data.datasets", "fold_for_inference": "inference.fold"}
__all__ = ["FeatureExtractor", "fold_for_inference", "load_dataset", "load_model", "register_dataset"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
