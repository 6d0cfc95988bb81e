"""A short name and a description of the machine a benchmark ran on, and the backends timed there."""

from __future__ import annotations

import platform
import re

import torch

import rga_ops


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """e.g. "cpu-amd-epyc-2t" or "cuda-nvidia-h100-80gb-hbm3": the results file stem."""
    if device.type == "cuda":
        model = torch.cuda.get_device_name(device)
    else:
        model = f"{cpu_model()} {torch.get_num_threads()}t"
    return f"{device.type}-" + re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    return f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def timed_backends(device: torch.device) -> list[str]:
    """Our backends usable on `device` (all but the reference), less the triton backend where it
    runs in triton's interpreter: that measures the interpreter, not the kernels."""
    return [name for name, s in rga_ops.backends().items()
            if name != "reference" and device.type in s.devices
            and not (name == "triton" and rga_ops.triton.STATUS.interpreted)]
