"""XGrad-CAM (Fu et al. 2020, "Axiom-based Grad-CAM"): Grad-CAM with activation-weighted gradient weights.

The worked example of ``docs/contributing.md``: a new explanation method is this one file (the registry
discovers it) plus its test (``tests/test_xgradcam.py``, against pytorch-grad-cam's ``XGradCAM``).
"""
from __future__ import annotations

import torch

from .methods import register_method

__all__ = ["xgradcam"]


@register_method("xgradcam", "layer", summary="XGrad-CAM: ReLU(Σ_k (Σ_ij A^k g^k / Σ_ij A^k) A^k) (Fu et al. 2020)")
def xgradcam(A: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``ReLU(Σ_k w_k A^k)`` with ``w_k = Σ_ij A^k_ij g^k_ij / (Σ_ij A^k_ij + eps)`` (a channel whose
    activations sum to 0 gets weight 0; pytorch-grad-cam adds ``eps = 1e-7``).

    Shape: ``A, g`` ``[N,K,h,w]`` → ``[N,h,w]``.
    """
    total = A.sum(dim=(2, 3)) + eps
    w = (A * g).sum(dim=(2, 3)) / torch.where(total == 0, torch.ones_like(total), total)
    return torch.relu((w[:, :, None, None] * A).sum(dim=1))
