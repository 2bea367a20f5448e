"""Class activation maps computed from (activation, gradient) pairs of one layer.

Every layer method takes ``A`` (activations) and ``g`` (d score / d A), both ``[N,K,h,w]``, and
``eps`` (the Grad-CAM++ alpha denominator offset; unused by the others), and
returns the raw map ``[N,h,w]`` at the layer's resolution (upsampling and normalization are
done by :func:`advlens.explain.explain`). All are differentiable.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .methods import register_method

__all__ = ["gradcam", "gradcam_pp_weights", "gradcam_pp", "layercam", "noisecam", "cam"]


@register_method("gradcam", "layer", summary="Grad-CAM: ReLU(Σ_k mean(g^k) A^k) (seed 000 eq. 5)")
def gradcam(A: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.; seed 000 eq. 5, seed 003): ``ReLU(sum_k mean_ij(g^k) A^k)``.

    Shape: ``A, g`` ``[N,K,h,w]`` → ``[N,h,w]``.
    """
    w = g.mean(dim=(2, 3), keepdim=True)
    return F.relu((w * A).sum(1))


def gradcam_pp_weights(A: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Grad-CAM++ channel weights ``w_k`` ``[N,K,1,1]`` (seed 002, eqs. 10–11).

    ``alpha_ij^k = g² / (2 g² + sum_ab A_ab^k · g³)`` (0 where the denominator is 0) and
    ``w_k = sum_ij alpha_ij^k · ReLU(g_ij^k)``. With the exponential score of Chattopadhay et al.
    the ``e^S`` factors cancel in alpha and only scale ``w`` per image, which the per-map
    normalization removes; we therefore differentiate the plain class score.

    ``eps`` is added to the denominator (0 = the paper; pytorch-grad-cam adds 1e-6, which
    visibly changes maps when gradients are small, e.g. on untrained networks).
    """
    g2 = g * g
    g3 = g2 * g
    den = 2 * g2 + A.sum(dim=(2, 3), keepdim=True) * g3 + eps
    alpha = torch.where(den != 0, g2 / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
    return (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)


@register_method("gradcam++", "layer", summary="Grad-CAM++ (seed 002 eqs. 10–12)")
def gradcam_pp(A: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al.; seed 002 eq. 12): ``ReLU(sum_k w_k A^k)``; ``A``, ``g`` ``[N,K,h,w]`` →
    ``[N,h,w]``."""
    return F.relu((gradcam_pp_weights(A, g, eps) * A).sum(1))


@register_method("layercam", "layer", summary="LayerCAM: ReLU(Σ_k ReLU(g) ⊙ A^k) (seed 002 eqs. 13–14)")
def layercam(A: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """LayerCAM (Jiang et al.; seed 002 eqs. 13–14): ``ReLU(sum_k ReLU(g_ij^k) A_ij^k)``; ``A``, ``g``
    ``[N,K,h,w]`` → ``[N,h,w]``."""
    return F.relu((F.relu(g) * A).sum(1))


@register_method("noisecam", "layer", summary="NoiseCAM: Grad-CAM++ global minus LayerCAM pixel weights (seed 002)")
def noisecam(A: torch.Tensor, g: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """NoiseCAM (seed 002, eqs. 15–17): Grad-CAM++ global weights minus LayerCAM pixel weights; ``A``, ``g``
    ``[N,K,h,w]`` → ``[N,h,w]``.

    ``w_ij^k,noise = w_k · 1 − ReLU(g_ij^k)`` (eq. 16) and ``M = ReLU(sum_k w^k,noise ⊙ A^k)``
    (eq. 17). Follows the paper: no ``e^S`` factor and no alpha re-normalization (the authors'
    tf-keras-vis code has both); the score is the pre-softmax class score.
    """
    w_noise = gradcam_pp_weights(A, g, eps) - F.relu(g)
    return F.relu((w_noise * A).sum(1))


@register_method("cam", "head", summary="CAM: Σ_k W_ck A^k at the layer feeding global pooling (seed 004 Sec. IV-D)")
def cam(A: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al.; seed 004): ``sum_k W[c,k] A^k`` at the layer feeding global pooling.

    Args:
        A: ``[N,K,h,w]`` activations.
        weight: ``[N,K]`` the classifier's row of each image's target class.

    No ReLU, as in seed 004's code (the map is min–max normalized afterwards).
    """
    return (weight[:, :, None, None] * A).sum(1)
