"""Which backends can run here, and which one `backend="auto"` picks.

Backends:
  reference  mirrors the original implementation (materialised N x N relations); the oracle
  torch      the re-associated algebra in plain PyTorch ops (any device, exportable)
  cpp        our C++ CPU kernels (rga_ops._C)
  cuda       our CUDA kernels (rga_ops._C built with CUDA)
  triton     our Triton kernels (rga_ops.triton): on CUDA tensors; on CPU tensors only in
             triton's interpreter (TRITON_INTERPRET=1 before importing rga_ops, for testing)

`backend="auto"` picks the fastest usable backend for the tensor's device; a
backend asked for by name that cannot run raises BackendUnavailableError, never
a silent fallback.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import torch

from ._extension import STATUS as _EXTENSION
from ._triton_probe import STATUS as _TRITON

BACKENDS = ("reference", "torch", "cpp", "cuda", "triton")
# The preference of "auto" per device type, fastest first (benchmarks/results/ has the numbers).
_AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "torch")}
# Measured exceptions to _AUTO_ORDER by op and size: (device type, op) -> ((largest N, backend), ...)
# in increasing N; the first entry with N <= largest N names the backend (used where it can run,
# never triton on the CPU). N: the nodes of relation_stack and relation_project, the positions
# H*W of ha_soft_gate. Each entry cites the benchmarks/results/ table it was read from. Empty so
# far: no backend has been measured faster than _AUTO_ORDER's first anywhere; in particular the
# triton kernels have not been timed on a GPU yet (they have only run in triton's interpreter).
_MEASURED_AUTO: dict[tuple[str, str], tuple[tuple[int, str], ...]] = {}




@dataclasses.dataclass(frozen=True)
class ModuleChoices:
    """Size thresholds of the choices inside the drop-in modules (rga_ops.nn.RGAModule)."""

    # The attention head's BatchNorm + ReLU + first conv as the fused batch_norm_relu_conv1x1 from
    # this many elements of the relation per item on: below, the fused op's fixed costs (a
    # statistics pass, per-item GEMMs) outweigh its saving and the plain ops run.
    fused_head_min_elements: int
    # The spatial branch's embeddings as a batched GEMM where positions (N) are at least this many
    # times the channels, else as a conv: the batched GEMM's weight gradient (one per item, then
    # summed) costs more than the conv's where channels outnumber positions.
    embedding_bmm_min_positions_per_channel: float
    # ... and as one GEMM over the batch's positions ([B*N, C] x [C, 3C']) where positions are at
    # most this fraction of the channels: on tiny maps with many channels the conv's backward runs
    # far below the GEMM rate (RGA-Net's last stage at 32x16, N 2 and C 2048 -> 3C' 3072, batch 64,
    # forward + backward: 60 ms as a conv, 39 ms as the GEMM; at N 8 the conv is faster again).
    embedding_gemm_max_positions_per_channel: float


# Measured on a 2-core Xeon (forward + backward, benchmarks.run --part modules; the GEMM threshold
# on a 2-core AMD EPYC); CUDA has not been measured yet and takes the CPU's values.
_MODULE_CHOICES = {
    "cpu": ModuleChoices(fused_head_min_elements=1 << 16, embedding_bmm_min_positions_per_channel=1.0,
                         embedding_gemm_max_positions_per_channel=1 / 1024),
    "cuda": ModuleChoices(fused_head_min_elements=1 << 16, embedding_bmm_min_positions_per_channel=1.0,
                          embedding_gemm_max_positions_per_channel=1 / 1024),
}


def module_choices(device_type: str) -> ModuleChoices:
    """The measured thresholds of the modules' choices on a device type (the CPU's where unmeasured)."""
    return _MODULE_CHOICES.get(device_type, _MODULE_CHOICES["cpu"])


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name and cannot run on the given device."""


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    name: str
    usable: bool
    devices: tuple[str, ...]
    reason: str


class BackendReport(dict):
    """Mapping backend name -> BackendStatus; prints as a table, with the choice of "auto"."""

    def auto(self) -> dict[str, str]:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        return {device: _auto_choice(device) for device in devices}

    def __str__(self) -> str:
        lines = [f"{'backend':<10} {'usable':<7} {'devices':<10} detail"]
        for s in self.values():
            lines.append(f"{s.name:<10} {'yes' if s.usable else 'no':<7} {','.join(s.devices) or '-':<10} {s.reason}")
        lines.append("auto picks: " + ", ".join(f"{d} -> {b}" for d, b in self.auto().items()))
        return "\n".join(lines)


def _compute_status(name: str) -> BackendStatus:
    if name in ("reference", "torch"):
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        return BackendStatus(name, True, devices, "plain PyTorch ops")
    if name == "cpp":
        return BackendStatus(name, _EXTENSION.loaded, ("cpu",) if _EXTENSION.loaded else (), _EXTENSION.reason)
    if name == "cuda":
        if not _EXTENSION.loaded:
            return BackendStatus(name, False, (), _EXTENSION.reason)
        if not _EXTENSION.cuda_kernels:
            decision = _EXTENSION.build_info.get("decision", "unknown")
            return BackendStatus(
                name, False, (),
                f"rga_ops._C was built without CUDA kernels: {decision}",
            )
        if not torch.cuda.is_available():
            return BackendStatus(name, False, (), "CUDA kernels are compiled but no GPU is visible")
        return BackendStatus(name, True, ("cuda",), f"CUDA kernels for {_EXTENSION.build_info.get('cuda_arch_list')}")
    if name == "triton":
        return BackendStatus(name, _TRITON.usable, _TRITON.devices, _TRITON.reason)


# Fixed for the life of the process; computed once so that resolving a backend is a
# dictionary lookup (cheap in eager mode, and transparent to torch.compile).
_STATUS = {name: _compute_status(name) for name in BACKENDS}


def _status(name: str) -> BackendStatus:
    if name not in _STATUS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS + ('auto',)}")
    return _STATUS[name]


def backends() -> BackendReport:
    """What is compiled and usable here, and why not; `print(rga_ops.backends())` for a table."""
    return BackendReport((name, _status(name)) for name in BACKENDS)


def _auto_choice(device_type: str) -> str:
    order = _AUTO_ORDER.get(device_type, ("torch",))
    return next((name for name in order if device_type in _status(name).devices), "torch")


def _measured_choice(device_type: str, op: str, n: int) -> str | None:
    name = next((name for largest, name in _MEASURED_AUTO.get((device_type, op), ()) if n <= largest), None)
    if name is None or device_type not in _status(name).devices or (name == "triton" and device_type == "cpu"):
        return None
    return name


_warned_degraded: set[str] = set()


def resolve_backend(backend: str, device: torch.device, op: str | None = None, n: int | None = None,
                    implementations: Mapping[str, object] | None = None) -> str:
    """The concrete backend that runs for tensors on `device` (for "auto": for `op` at size `n`
    where _MEASURED_AUTO says so); raises if `backend` cannot, or if it has no implementation
    among `implementations` (an op's table) where one is given."""
    if backend == "auto":
        measured = _measured_choice(device.type, op, n) if op is not None else None
        if measured is not None and (implementations is None or measured in implementations):
            return measured
        choice = _auto_choice(device.type)
        preferred = _AUTO_ORDER.get(device.type, ("torch",))[0]
        if choice != preferred and device.type not in _warned_degraded:
            _warned_degraded.add(device.type)
            warnings.warn(
                f"rga_ops: backend='auto' uses {choice!r} on {device.type} because {preferred!r} is "
                f"unavailable: {_status(preferred).reason}",
                stacklevel=3,
            )
        return choice
    status = _status(backend)
    if device.type not in status.devices:
        why = status.reason if not status.usable else f"it runs on {', '.join(status.devices)} tensors only"
        raise BackendUnavailableError(f"rga_ops backend {backend!r} cannot run on {device.type} tensors: {why}")
    if implementations is not None and backend not in implementations:
        raise BackendUnavailableError(
            f"rga_ops backend {backend!r} has no kernel for {op}; it has: {', '.join(implementations)}")
    return backend


def check_backend_name(backend: str) -> str:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    return backend
