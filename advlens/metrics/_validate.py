"""Input checks shared by the metric functions (private).

Every problem raises :class:`advlens._checks.AdvlensError` with a one-line message that names the
argument, the shape it had and the shape it should have.
"""
from __future__ import annotations

import torch

from advlens._checks import AdvlensError

_LAYOUTS = {2: "[N,D]", 3: "[N,H,W]", 4: "[N,C,H,W]"}


def _layouts(ndims: tuple[int, ...]) -> str:
    return " or ".join(_LAYOUTS[d] for d in ndims)


def check_tensor(x: object, name: str, ndims: tuple[int, ...] = (3, 4), allow_bool: bool = False) -> torch.Tensor:
    """Check one batch: a tensor with an allowed ndim, not empty, finite; return it as a float tensor.

    Integer tensors become ``float32``; bool tensors are returned as they are when ``allow_bool``.
    """
    if not isinstance(x, torch.Tensor):
        raise AdvlensError(f"{name} must be a torch.Tensor of shape {_layouts(ndims)}, got {type(x).__name__}")
    if x.ndim not in ndims:
        raise AdvlensError(f"{name} must have shape {_layouts(ndims)}, got {list(x.shape)}")
    if x.numel() == 0:
        raise AdvlensError(f"{name} is empty, got shape {list(x.shape)}")
    if x.dtype == torch.bool:
        if allow_bool:
            return x
        x = x.to(torch.float32)
    elif x.is_complex():
        raise AdvlensError(f"{name} must be a real tensor, got dtype {x.dtype}")
    elif not x.is_floating_point():
        x = x.to(torch.float32)
    with torch.no_grad():
        if not bool(torch.isfinite(x).all()):
            raise AdvlensError(f"{name} contains NaN or infinite values (shape {list(x.shape)})")
    return x


def check_pair(
    a: object,
    b: object,
    names: tuple[str, str] = ("a", "b"),
    ndims: tuple[int, ...] = (3, 4),
    allow_bool: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two batches that are compared sample by sample: same shape, same device, finite values."""
    na, nb = names
    for x, n in ((a, na), (b, nb)):
        if not isinstance(x, torch.Tensor):
            raise AdvlensError(f"{n} must be a torch.Tensor of shape {_layouts(ndims)}, got {type(x).__name__}")
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    if a.shape != b.shape:
        raise AdvlensError(f"{na} and {nb} must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    if a.device != b.device:
        raise AdvlensError(f"{na} and {nb} must be on the same device, got {a.device} and {b.device}")
    a = check_tensor(a, na, ndims, allow_bool)
    b = check_tensor(b, nb, ndims, allow_bool)
    if a.dtype != torch.bool and b.dtype != torch.bool and a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    return a, b


def check_data_range(data_range: object) -> float:
    """``data_range`` must be a positive finite number; return it as a Python float."""
    if isinstance(data_range, torch.Tensor) and data_range.numel() == 1:
        data_range = data_range.item()
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)):
        raise AdvlensError(f"data_range must be a positive number, got {data_range!r}")
    value = float(data_range)
    if not value > 0 or value == float("inf"):
        raise AdvlensError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


def flatten(x: torch.Tensor) -> torch.Tensor:
    """``[N, ...] -> [N, D]``."""
    return x.reshape(x.shape[0], -1)
