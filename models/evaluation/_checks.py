"""Input validation shared by the evaluation functions.

Messages name the argument and the expected vs actual value, so that a wrong
call is fixed from the message alone.
"""

import torch


def as_matrix(name: str, value) -> torch.Tensor:
    """A non-empty 2-D floating tensor; numpy arrays are shared, not copied."""
    t = torch.as_tensor(value)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor or array, got dtype {t.dtype}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    return t


def as_ids(name: str, value, length: int, what: str, device: torch.device) -> torch.Tensor:
    """A 1-D int64 tensor of identity or camera labels, one per `what` (e.g. 'query')."""
    t = torch.as_tensor(value)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.numel() != length:
        raise ValueError(f"{name} must have one entry per {what} ({length}), got {t.numel()}")
    return t.to(device=device, dtype=torch.int64)


def check_finite(name: str, t: torch.Tensor, row_offset: int = 0) -> None:
    """Raise if `t` [R, C] holds NaN or infinity, naming the first bad row."""
    # aminmax propagates NaN and is much cheaper than an elementwise isfinite pass (one read of `t`).
    # A whole-tensor reduction does not depend on the layout, but runs ~15x faster on a contiguous
    # tensor than on its transpose (the column-major blocks of `evaluate_features`): read it in order.
    whole = t.t() if not t.is_contiguous() and t.t().is_contiguous() else t
    low, high = torch.aminmax(whole)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return
    row = int((~torch.isfinite(t)).any(dim=1).nonzero()[0, 0]) + row_offset
    raise ValueError(f"{name} contains NaN or infinite values (first in row {row})")


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def one_of(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value
