"""Validation helpers shared by the whole package.

Every user-facing problem raises :class:`AdvlensError` with a one-line message that names the
problem and, where possible, the fix. The CLI turns it into exit code 2.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch

__all__ = ["AdvlensError", "check_images", "unknown_name"]


class AdvlensError(ValueError):
    """A problem with the user's input (name, file, tensor, parameter). Message is one line."""


def unknown_name(kind: str, name: object, options: Iterable[str]) -> AdvlensError:
    """Build the error for an unknown ``kind`` (model, layer, method…), suggesting close matches.

    Example:
        >>> str(unknown_name("method", "gradkam", ["gradcam", "layercam"]))
        "unknown method 'gradkam'; did you mean 'gradcam'? (choose from: gradcam, layercam)"
    """
    options = list(options)
    close = difflib.get_close_matches(str(name), options, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(options[:20]) + (", …" if len(options) > 20 else "")
    return AdvlensError(f"unknown {kind} {name!r}{hint} (choose from: {shown})")


def check_images(x: object, name: str = "x", channels: int | None = 3) -> torch.Tensor:
    """Check that ``x`` is a float image batch ``[N, C, H, W]`` with finite values in [0, 1].

    Args:
        x: the tensor to check.
        name: how to call it in the error message.
        channels: required channel count (``None`` accepts any).

    Returns:
        ``x`` unchanged.

    Raises:
        AdvlensError: wrong type, shape, dtype, NaN/inf, or values outside [0, 1].
    """
    if not isinstance(x, torch.Tensor):
        raise AdvlensError(f"{name} must be a torch.Tensor of shape [N,3,H,W], got {type(x).__name__}")
    if x.ndim != 4:
        raise AdvlensError(
            f"{name} must have shape [N,C,H,W], got {list(x.shape)}"
            + ("; add a batch dimension with x[None]" if x.ndim == 3 else "")
        )
    if channels is not None and x.shape[1] != channels:
        raise AdvlensError(f"{name} must have {channels} channels, got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise AdvlensError(f"{name} is an empty batch")
    if not x.is_floating_point():
        raise AdvlensError(f"{name} must be a float tensor in [0,1], got dtype {x.dtype}")
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise AdvlensError(f"{name} contains NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise AdvlensError(
            f"{name} must be in [0,1] (normalization happens inside the model), got range [{lo:.3g}, {hi:.3g}]"
        )
    return x
