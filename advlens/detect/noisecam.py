"""NoiseCAM + DBSCAN detector (seed 002, Sec. III-E).

The NoiseCAM map (global Grad-CAM++ weights minus pixel-wise LayerCAM weights, seed 002 eqs. 15–17) of
the probe layer (seed 002: VGG-16's third conv layer) exposes adversarial perturbation while staying
quiet under Gaussian noise. Its salient pixels (normalized map > ``salient``) are clustered with DBSCAN
(``eps`` 2, ``min_samples`` 3, scikit-learn, on CPU); more than ``max_clusters`` (3) effective noise
clusters flag the input. The score is the number of clusters.
"""
from __future__ import annotations

import numpy as np
import torch

from .._checks import AdvlensError
from ..explain import explain
from .base import Detector, auto_batch

__all__ = ["NoiseCAMDetector", "count_clusters"]


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
        batch_size: images per explanation pass (None: by device and image size, see ``auto_batch``).
    """

    kind = "noisecam"
    params = ("layer", "salient", "eps", "min_samples", "max_clusters", "batch_size")

    def __init__(self, layer: str | None = None, salient: float = 0.5, eps: float = 2.0, min_samples: int = 3,
                 max_clusters: int = 3, batch_size: int | None = None) -> None:
        super().__init__()
        if not 0 <= salient < 1:
            raise AdvlensError(f"salient must be in [0, 1), got {salient!r}")
        self.layer, self.salient, self.eps, self.min_samples = layer, float(salient), float(eps), int(min_samples)
        self.max_clusters, self.batch_size = int(max_clusters), batch_size
        self.threshold = float(max_clusters)

    def _fit(self, x: torch.Tensor) -> None:
        names = list(self.model.layers)
        self.layer = self.layer or names[min(2, len(names) - 1)]
        self.model.resolve_layers([self.layer])

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """NoiseCAM maps ``[N,H,W]`` of the probe layer (normalized, input size)."""
        return explain(self.model, x, "noisecam", layers=[self.layer], batch_size=auto_batch(x, self.batch_size))[self.layer]

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return count_clusters(self.maps(x), self.salient, self.eps, self.min_samples)
