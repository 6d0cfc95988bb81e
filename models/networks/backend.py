"""The `backend` of a whole network: every rga_ops module in it computes with the same one."""

from __future__ import annotations

from torch import nn

from rga_ops.backends import check_backend_name


def set_backend(root: nn.Module, backend: str) -> None:
    """Sets `backend` ("auto", "reference", "torch", "cpp", "cuda"; see rga_ops.backends()) on
    every submodule of `root` that has one (RGA modules, soft attentions, their folded forms)."""
    check_backend_name(backend)
    for module in root.modules():
        if module is not root and isinstance(getattr(module, "backend", None), str):
            module.backend = backend


class OneBackend:
    """Mixin of a network (an nn.Module) whose rga_ops modules compute with one backend: the
    `backend` property reads it and, set, changes it in every one of them (set_backend).
    The network's __init__ builds its modules with the backend, then sets `_backend`."""

    _backend: str

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        set_backend(self, backend)
        self._backend = backend
