"""`TokenGrid`: how a vision transformer's layer output maps onto a spatial grid, and back.

CAM methods need activations ``[N, C, h, w]``. A ViT/DeiT block returns tokens ``[N, P + h·w, C]``
(``P`` class/distillation tokens first); a Swin stage returns ``[N, h, w, C]`` (NHWC). pytorch-grad-cam
asks its users for a hand-written ``reshape_transform`` doing this; advlens finds the layout when the
layers are discovered (:mod:`advlens.models.discover`) and the engine applies it inside its hook:
``grid = to_grid(output)`` is what the explainers see, and the network goes on with
``from_grid(grid, output)`` — equal to ``output`` value for value, but computed from ``grid``, so the
one backward of the pass reaches ``grid`` and its gradient is the gradient of the patch tokens
(the prefix tokens' own gradient flows through ``output`` unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import AdvlensError

__all__ = ["TokenGrid"]


@dataclass(frozen=True)
class TokenGrid:
    """Layout of one layer's output.

    Attributes:
        layout: ``"tokens"`` (``[N, prefix + h·w, C]``) or ``"nhwc"`` (``[N, h, w, C]``).
        grid: ``(h, w)`` of the patch tokens (``"tokens"`` only; ``None`` for ``"nhwc"``).
        prefix: class/distillation tokens before the patch tokens (dropped from the map).
    """

    layout: str
    grid: tuple[int, int] | None = None
    prefix: int = 0

    def __post_init__(self) -> None:
        if self.layout not in ("tokens", "nhwc"):
            raise AdvlensError(f"token layout must be 'tokens' or 'nhwc', got {self.layout!r}")
        if self.layout == "tokens" and self.grid is None:
            raise AdvlensError("a 'tokens' layout needs its patch grid (h, w)")

    def to_grid(self, output: Tensor) -> Tensor:
        """``[N, prefix + h·w, C]`` or ``[N, h, w, C]`` -> ``[N, C, h, w]``."""
        if self.layout == "nhwc":
            if output.ndim != 4:
                raise AdvlensError(f"expected an NHWC layer output [N,h,w,C], got shape {list(output.shape)}")
            return output.permute(0, 3, 1, 2)
        h, w = self.grid  # type: ignore[misc]
        if output.ndim != 3 or output.shape[1] != self.prefix + h * w:
            raise AdvlensError(f"expected {self.prefix} + {h}×{w} tokens [N,T,C], got shape {list(output.shape)} "
                               "(was the input size changed after the layers were found?)")
        return output[:, self.prefix:].transpose(1, 2).reshape(output.shape[0], output.shape[2], h, w)

    def from_grid(self, grid: Tensor, output: Tensor) -> Tensor:
        """The layer output rebuilt from ``grid`` ``[N, C, h, w]`` (and the prefix tokens of ``output``)."""
        if self.layout == "nhwc":
            return grid.permute(0, 2, 3, 1)
        patches = grid.flatten(2).transpose(1, 2)
        return torch.cat([output[:, : self.prefix], patches], dim=1) if self.prefix else patches
