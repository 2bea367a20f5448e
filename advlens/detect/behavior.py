"""Behaviour-deviation detector (seed 002, Sec. III-D, steps 1–5).

1. *Image cleaning*: PCA fitted on clean images keeps 99 % of the variance; ``I_c`` = the input's
   reconstruction.
2. *Noise extraction*: ``I_n = I_o − I_c``.
3. *Benign noisy samples*: ``copies`` (≥ 50) Gaussian images ``I_c + N(mean(I_n), std(I_n))``.
4. *Input-specific model*: Grad-CAM of the probe layer (seed 002: VGG-16 ``block5_conv1``) for ``I_c``
   and every copy; the behaviour deviations ``D_g = cos(H(I_c), H(copy))`` (eq. 8) give a benign
   mean and spread for this very input.
5. *Comparing*: ``D_o = cos(H(I_c), H(I_o))``; the score is how many benign standard deviations
   ``D_o`` lies below the benign mean, ``(mean(D_g) − D_o) / std(D_g)``; flagged above ``threshold``.
   The paper flags "sufficient drift"; a fixed 2σ flags many clean inputs (PCA cleaning itself moves the
   map more than Gaussian copies do), so by default the threshold is calibrated: the PCA is fitted on
   75 % of the clean images and the threshold is the (1 − ``fpr``) quantile of the other 25 %'s scores.

All maps explain the class ``I_c`` is predicted as; the copies go through the model in batches.
An input's score depends only on that input (and the fitted PCA): its copies' noise is drawn from its
own generator, seeded by ``seed`` and the input's content (:mod:`advlens._rng`), not per batch.
"""
from __future__ import annotations

import torch

from .._checks import AdvlensError
from .._rng import randn_per_image
from ..explain import explain
from ..metrics import cosine
from .base import Detector, auto_batch

__all__ = ["BehaviorDeviation"]


class BehaviorDeviation(Detector):
    """Seed 002's behaviour-deviation detector (see the module docstring).

    Args:
        layer: probe layer (None: the layer two thirds deep in ``model.layers`` — ``block5_conv1`` is
            seed 002's choice for VGG-16).
        variance: fraction of the clean images' variance the PCA keeps (0.99).
        copies: benign noisy copies per input (≥ 50 in the paper).
        threshold: score above which an input is flagged; None calibrates it on held-out clean images
            to the false-positive rate ``fpr`` (0.05).
        batch_size: images per explanation pass (None: by device and image size, see ``auto_batch``).
        seed: the noise of the copies, drawn per image from the image's content (:mod:`advlens._rng`),
            so results do not depend on the batch (its size, the other images, the order).
    """

    kind = "behavior"
    params = ("layer", "variance", "copies", "fpr", "batch_size", "seed")

    def __init__(self, layer: str | None = None, variance: float = 0.99, copies: int = 50,
                 threshold: float | None = None, fpr: float = 0.05, batch_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if not 0 < variance <= 1:
            raise AdvlensError(f"variance must be in (0, 1], got {variance!r}")
        if not isinstance(copies, int) or copies < 2:
            raise AdvlensError(f"copies must be an integer ≥ 2, got {copies!r}")
        if not 0 < fpr < 1:
            raise AdvlensError(f"fpr must be in (0, 1), got {fpr!r}")
        self.layer, self.variance, self.copies, self.fpr = layer, float(variance), copies, float(fpr)
        self.fixed = threshold is not None
        self.threshold, self.batch_size, self.seed = float(threshold or 0.0), batch_size, int(seed)

    def _fit(self, x: torch.Tensor) -> None:
        from sklearn.decomposition import PCA

        names = list(self.model.layers)
        self.layer = self.layer or names[(2 * len(names)) // 3]
        self.model.resolve_layers([self.layer])
        n_pca = len(x) if self.fixed else (3 * len(x)) // 4
        if n_pca < 2 or (not self.fixed and len(x) - n_pca < 4):
            raise AdvlensError(f"fit needs at least {2 if self.fixed else 8} clean images, got {len(x)}")
        flat = x[:n_pca].flatten(1).cpu().double().numpy()
        pca = PCA(n_components=self.variance if self.variance < 1 else None, svd_solver="full").fit(flat)
        dev, dt = x.device, x.dtype
        self.state = {"mean": torch.as_tensor(pca.mean_, dtype=dt, device=dev),
                      "components": torch.as_tensor(pca.components_, dtype=dt, device=dev)}
        if not self.fixed:
            held_out = self._score(x[n_pca:])
            self.threshold = float(torch.quantile(held_out.double(), 1 - self.fpr))

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1: the PCA reconstruction ``I_c`` ``[N,3,H,W]`` (clamped to [0,1])."""
        mean, comp = self.state["mean"], self.state["components"]
        z = (x.flatten(1) - mean) @ comp.T
        return (z @ comp + mean).view_as(x).clamp(0, 1)

    def _maps(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return explain(self.model, x, "gradcam", layers=[self.layer], target=target,
                       batch_size=auto_batch(x, self.batch_size))[self.layer]

    def benign_copies(self, x: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
        """Steps 2–3: ``copies`` Gaussian images ``I_c + N(mean(I_n), std(I_n))`` per input, ``[copies·N,3,H,W]``
        (copy-major), from ``x`` and its cleaning ``xc`` (both ``[N,3,H,W]``); input ``i``'s noise comes from its
        own generator, seeded by ``seed`` and ``x[i]``'s content, whatever the batch."""
        noise = x - xc
        mu = noise.mean(dim=(1, 2, 3), keepdim=True)
        sd = noise.std(dim=(1, 2, 3), keepdim=True)
        eps = randn_per_image(x, self.seed, copies=self.copies)  # [copies,N,3,H,W]
        return (xc.unsqueeze(0) + mu + sd * eps).clamp(0, 1).flatten(0, 1)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        n, k = len(x), self.copies
        xc = self.clean(x)
        copies = self.benign_copies(x, xc)
        with torch.no_grad():
            target = self.model(xc).argmax(1)
        h_c = self._maps(xc, target)
        h_o = self._maps(x, target)
        h_g = self._maps(copies, target.repeat(k)).view(k, n, *h_c.shape[1:])
        d_g = cosine(h_c.expand(k, *h_c.shape).flatten(0, 1), h_g.flatten(0, 1)).view(k, n)
        d_o = cosine(h_c, h_o)
        return (d_g.mean(0) - d_o) / d_g.std(0).clamp_min(1e-6)
