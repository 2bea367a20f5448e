"""NoiseCAM + DBSCAN detector (seed 002, Sec. III-E).

The NoiseCAM map of the probe layer (seed 002: VGG-16's third conv layer) exposes adversarial perturbation
while staying quiet under Gaussian noise. Two forms (``noisecam_form``):

- ``"paper"`` (default), seed 002 eqs. 9–17: Grad-CAM++ channel weights ``w_k = Σ_ij α_ij^k ReLU(g_ij^k)``
  with ``α = g² / (2g² + Σ_ab A_ab^k g³)`` (0 where the denominator is 0) minus the LayerCAM pixel weights
  ``ReLU(g_ij^k)``; ``M = ReLU(Σ_k (w_k − ReLU(g^k)) ⊙ A^k)`` (:func:`advlens.explain.cam.noisecam`).
- ``"code"``, the authors' tf-keras-vis code (``Wenkai-tan/noisecam``): the Grad-CAM++ global weight is
  computed from ``e^S·g`` (``S`` the class score) and α is normalized by ``Σ_ij α``, so
  ``w_k = e^S Σ_ij ReLU(g_ij^k) α_ij^k / Σ_ij α_ij^k``, while the pixel weight stays ``ReLU(g_ij^k)``
  (:func:`noisecam_code`). ``e^S`` overflows float32 above S ≈ 88.

Both differentiate the pre-softmax class score of each image's predicted class; the map is upsampled
bilinearly to the input size and min–max normalized. Its salient pixels (normalized map > ``salient``)
are clustered with DBSCAN (``eps`` 2, ``min_samples`` 3, scikit-learn, on CPU); more than
``max_clusters`` (3) effective noise clusters flag the input. The score is the number of clusters.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .._checks import AdvlensError, check_choice
from ..explain import cam as _cam
from ..explain.api import normalize_maps
from ..explain.engine import forward_backward
from .base import Detector, auto_batch

__all__ = ["NoiseCAMDetector", "NOISECAM_FORMS", "count_clusters", "noisecam_code"]

#: the NoiseCAM map: seed 002 eqs. 15–17 (default) or the authors' code
NOISECAM_FORMS = ("paper", "code")


def noisecam_code(A: torch.Tensor, g: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """NoiseCAM as the authors' code computes it (``Wenkai-tan/noisecam``, ``noisecam.py``).

    With ``first = e^S g``, ``second = first·g``, ``third = second·g``:
    ``α = second / (2·second + third·Σ_ab A_ab^k)`` (denominator 1 where ``second`` is 0), then
    ``α ← α / Σ_ij α`` (1 where that sum is 0); ``w_k = Σ_ij ReLU(first_ij) α_ij``;
    ``M = ReLU(Σ_k (w_k − ReLU(g_ij^k)) A_ij^k)``.

    Shape: ``A, g`` ``[N,K,h,w]``, ``score`` ``[N]`` (the differentiated class score) → ``[N,h,w]``.
    """
    first = torch.exp(score).to(g.dtype)[:, None, None, None] * g
    second = first * g
    third = second * g
    den = 2 * second + third * A.sum(dim=(2, 3), keepdim=True)
    alpha = second / (den + (second == 0).to(den.dtype))
    norm = alpha.sum(dim=(2, 3), keepdim=True)
    alpha = alpha / (norm + (norm == 0).to(norm.dtype))
    w = (F.relu(first) * alpha).sum(dim=(2, 3), keepdim=True)
    return F.relu(((w - F.relu(g)) * A).sum(1))


def count_clusters(maps: torch.Tensor, salient: float = 0.5, eps: float = 2.0, min_samples: int = 3) -> torch.Tensor:
    """DBSCAN clusters of the salient pixels of each map ``[N,H,W]`` (values in [0,1]) → ``[N]`` counts."""
    from sklearn.cluster import DBSCAN

    counts = []
    for m in maps.detach().cpu().numpy():
        pts = np.argwhere(m > salient)
        if len(pts) < min_samples:
            counts.append(0)
            continue
        labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(pts)
        counts.append(len(set(labels.tolist()) - {-1}))
    return torch.tensor(counts, dtype=torch.float32, device=maps.device)


class NoiseCAMDetector(Detector):
    """Seed 002's NoiseCAM detector (see the module docstring).

    Args:
        layer: probe layer (None: the third layer of ``model.layers``, seed 002's "third conv layer").
        salient: normalized-map level above which a pixel counts as noise activation.
        eps, min_samples: DBSCAN radius (pixels) and neighbours (seed 002: 2 and 3).
        max_clusters: flag inputs with more clusters than this (seed 002: 3).
        noisecam_form: ``"paper"`` (default, eqs. 15–17) or ``"code"`` (the authors' code, see
            :func:`noisecam_code`).
        batch_size: images per explanation pass (None: by device and image size, see ``auto_batch``).
    """

    kind = "noisecam"
    params = ("layer", "salient", "eps", "min_samples", "max_clusters", "noisecam_form", "batch_size")

    def __init__(self, layer: str | None = None, salient: float = 0.5, eps: float = 2.0, min_samples: int = 3,
                 max_clusters: int = 3, noisecam_form: str = "paper", batch_size: int | None = None) -> None:
        super().__init__()
        if not 0 <= salient < 1:
            raise AdvlensError(f"salient must be in [0, 1), got {salient!r}")
        self.noisecam_form = check_choice(noisecam_form, "noisecam_form", NOISECAM_FORMS)
        self.layer, self.salient, self.eps, self.min_samples = layer, float(salient), float(eps), int(min_samples)
        self.max_clusters, self.batch_size = int(max_clusters), batch_size
        self.threshold = float(max_clusters)

    def _fit(self, x: torch.Tensor) -> None:
        names = list(self.model.layers)
        self.layer = self.layer or names[min(2, len(names) - 1)]
        self.model.resolve_layers([self.layer])

    def raw_maps(self, x: torch.Tensor) -> torch.Tensor:
        """NoiseCAM maps ``[N,h,w]`` of the probe layer at its resolution (not normalized) for ``x`` ``[N,3,H,W]``,
        each explaining its predicted class, in the form ``noisecam_form``."""
        parts = []
        for chunk in x.split(auto_batch(x, self.batch_size)):
            p = forward_backward(self.model, chunk, [self.layer])
            A, g = p.acts[self.layer].detach(), p.grads[self.layer].detach()
            if self.noisecam_form == "paper":
                parts.append(_cam.noisecam(A, g))
            else:
                parts.append(noisecam_code(A, g, p.logits.detach().gather(1, p.target[:, None])[:, 0]))
        return torch.cat(parts)

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """NoiseCAM maps ``[N,H,W]`` of the probe layer (bilinear to the input size, min–max normalized)."""
        raw = self.raw_maps(x)
        if tuple(raw.shape[-2:]) != tuple(x.shape[-2:]):
            raw = F.interpolate(raw[:, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        return normalize_maps(raw)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return count_clusters(self.maps(x), self.salient, self.eps, self.min_samples)
