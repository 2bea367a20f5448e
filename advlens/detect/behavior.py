"""Behaviour-deviation detector (seed 002, Sec. III-D, steps 1–5).

1. *Image cleaning* (``pca``): "given an input image ``I_o``, we generated a clean version ``I_c`` of it
   using PCA to compress and retain 99 % of its original information". The paper compresses the input
   itself, so by default (``pca="channel"``) each channel of each image is its own data set: its ``H`` rows
   are the samples and its ``W`` columns the features (the usual reading of "PCA image compression", as
   in scikit-learn's ``PCA(0.99).fit(channel)``); the fewest components whose explained variance reaches
   99 % are kept and ``I_c`` is the reconstruction. ``pca="image"`` treats the image as one ``H × (W·C)``
   matrix instead (rows are samples, each row's pixels and channels the features). The paper does not say
   which; both are per image. ``pca="dataset"`` is the former advlens form: one PCA fitted across the clean
   images given to :meth:`~BehaviorDeviation.fit`, and ``I_c`` is the input's projection on it.
2. *Noise extraction*: ``I_n = I_o − I_c``.
3. *Benign noisy samples*: ``copies`` (≥ 50) Gaussian images ``I_c + N(mean(I_n), std(I_n))`` (eq. 2).
4. *Input-specific model*: Grad-CAM of the probe layer (VGG-16 ``block5_conv1``, "the first convolution
   layer in block 5") for ``I_c`` and every copy; ``D_g = cos(H(I_c), H(copy))`` (eq. 8) per copy.
5. *Comparing* (``rule``): ``D_o = cos(H(I_c), H(I_o))``. The paper flags the input when it "compromises"
   the layer, and Sec. III-D defines compromised: the layer's deviation is more severe than the median
   deviation under the same amount of Gaussian noise. So by default (``rule="paper"``) the score is
   ``median(D_g) − D_o`` and the input is flagged when it is > 0 (``threshold`` 0): its map is less similar to
   ``H(I_c)`` than the median noisy copy's. (Step 5 says "the last convolution layer"; step 4 and Sec. IV-C
   name the probe layer, which is used.) ``rule="calibrated"`` is the former advlens form: the score is
   ``(mean(D_g) − D_o) / std(D_g)`` and the threshold is the (1 − ``fpr``) quantile of the scores of held-out
   clean images (with ``pca="dataset"`` the PCA is fitted on 75 % of them and the threshold set on the rest).

All maps explain the class ``I_c`` is predicted as; the copies go through the model in batches.
An input's score depends only on that input (and a fitted dataset PCA): its copies' noise is drawn from
its own generator, seeded by ``seed`` and the input's content (:mod:`advlens._rng`), not per batch.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .._checks import AdvlensError, check_choice
from .._rng import randn_per_image
from ..explain import explain
from ..metrics import cosine
from .base import Detector, auto_batch

__all__ = ["BehaviorDeviation", "PCA_FORMS", "RULES", "pca_reconstruct", "probe_layer"]

#: step 1: per image and channel (paper, default), per image as one H×(W·C) matrix, one PCA over the fit set
PCA_FORMS = ("channel", "image", "dataset")
#: step 5: median of the benign deviations, threshold 0 (paper, default); z-score at a calibrated FPR
RULES = ("paper", "calibrated")


def probe_layer(names: list[str]) -> str:
    """Seed 002's probe (Sec. III-D step 4): the first conv layer of the last block — VGG-16's
    ``block5_conv1`` — when ``names`` are Keras-style ``block{b}_conv{k}``; otherwise the layer two thirds
    deep in ``names``."""
    convs = [(int(m[1]), int(m[2]), n) for n in names if (m := re.fullmatch(r"block(\d+)_conv(\d+)", n))]
    if convs:
        last = max(b for b, _, _ in convs)
        return min((k, n) for b, k, n in convs if b == last)[1]
    return names[(2 * len(names)) // 3]


def pca_reconstruct(m: torch.Tensor, variance: float) -> torch.Tensor:
    """Per-matrix PCA compression (seed 002 step 1): each ``m[b]`` ``[R,F]`` is a data set of ``R`` samples
    with ``F`` features; it is centred on its row mean, the fewest principal components whose explained
    variance ratio reaches ``variance`` are kept (scikit-learn's rule for ``PCA(n_components=variance)``:
    ``1 + #{k : cumsum(ratio)_k ≤ variance}``; all when ``variance`` is 1), and the reconstruction is returned.

    Shape: ``[B,R,F]`` → ``[B,R,F]``. Batched SVD (``torch.linalg.svd``) on ``m``'s device. The basis is
    computed without gradient: the result is differentiable in ``m`` as the projection on a fixed basis.
    """
    mu = m.mean(1, keepdim=True)
    c = m - mu
    with torch.no_grad():
        _, s, vh = torch.linalg.svd(c.detach(), full_matrices=False)  # s [B,r], vh [B,r,F]
        if variance < 1:
            var = s * s
            ratio = var.cumsum(1) / var.sum(1, keepdim=True).clamp_min(torch.finfo(var.dtype).tiny)
            k = (ratio <= variance).sum(1, keepdim=True) + 1
            vh = vh * (torch.arange(s.shape[1], device=s.device) < k).to(vh.dtype)[..., None]
    return mu + (c @ vh.transpose(1, 2)) @ vh


class BehaviorDeviation(Detector):
    """Seed 002's behaviour-deviation detector (see the module docstring).

    Args:
        layer: probe layer (None: :func:`probe_layer` — ``block5_conv1`` on VGG-16, seed 002 step 4).
        variance: fraction of the variance the PCA keeps (0.99, seed 002 step 1).
        copies: benign noisy copies per input (≥ 50 in the paper).
        threshold: score above which an input is flagged; None: 0 for ``rule="paper"``, calibrated on
            held-out clean images to the false-positive rate ``fpr`` (0.05) for ``rule="calibrated"``.
        pca: ``"channel"`` (default, paper: each image's channels compressed on their own), ``"image"``
            (each image as one ``H × (W·C)`` matrix) or ``"dataset"`` (one PCA fitted on the clean images).
        rule: ``"paper"`` (default: score ``median(D_g) − D_o``) or ``"calibrated"`` (z-score, FPR-calibrated).
        batch_size: images per explanation pass (None: by device and image size, see ``auto_batch``).
        seed: the noise of the copies, drawn per image from the image's content (:mod:`advlens._rng`),
            so results do not depend on the batch (its size, the other images, the order).
    """

    kind = "behavior"
    params = ("layer", "variance", "copies", "fpr", "pca", "rule", "batch_size", "seed")

    def __init__(self, layer: str | None = None, variance: float = 0.99, copies: int = 50,
                 threshold: float | None = None, fpr: float = 0.05, pca: str = "channel", rule: str = "paper",
                 batch_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if not 0 < variance <= 1:
            raise AdvlensError(f"variance must be in (0, 1], got {variance!r}")
        if not isinstance(copies, int) or copies < 2:
            raise AdvlensError(f"copies must be an integer ≥ 2, got {copies!r}")
        if not 0 < fpr < 1:
            raise AdvlensError(f"fpr must be in (0, 1), got {fpr!r}")
        self.pca, self.rule = check_choice(pca, "pca", PCA_FORMS), check_choice(rule, "rule", RULES)
        self.layer, self.variance, self.copies, self.fpr = layer, float(variance), copies, float(fpr)
        self.fixed = threshold is not None
        self.threshold, self.batch_size, self.seed = float(threshold or 0.0), batch_size, int(seed)

    def _fit(self, x: torch.Tensor) -> None:
        self.layer = self.layer or probe_layer(list(self.model.layers))
        self.model.resolve_layers([self.layer])
        calibrate = self.rule == "calibrated" and not self.fixed
        n_pca = 0 if self.pca != "dataset" else len(x) if not calibrate else (3 * len(x)) // 4
        need = (8 if calibrate else 2) if self.pca == "dataset" else 4 if calibrate else 1
        if len(x) < need:
            raise AdvlensError(f"fit needs at least {need} clean images (pca={self.pca!r}, rule={self.rule!r}), "
                               f"got {len(x)}")
        if self.pca == "dataset":
            self._fit_dataset_pca(x[:n_pca])
        if calibrate:
            self.threshold = float(torch.quantile(self._score(x[n_pca:]).double(), 1 - self.fpr))

    def _fit_dataset_pca(self, x: torch.Tensor) -> None:
        from sklearn.decomposition import PCA

        flat = x.flatten(1).cpu().double().numpy()
        pca = PCA(n_components=self.variance if self.variance < 1 else None, svd_solver="full").fit(flat)
        dev, dt = x.device, x.dtype
        self.state = {"mean": torch.as_tensor(pca.mean_, dtype=dt, device=dev),
                      "components": torch.as_tensor(pca.components_, dtype=dt, device=dev)}

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """Step 1: the PCA reconstruction ``I_c`` ``[N,3,H,W]`` of ``x`` ``[N,3,H,W]`` (clamped to [0,1])."""
        n, c, h, w = x.shape
        if self.pca == "channel":
            out = pca_reconstruct(x.reshape(n * c, h, w), self.variance).view_as(x)
        elif self.pca == "image":
            rows = x.permute(0, 2, 3, 1).reshape(n, h, w * c)
            out = pca_reconstruct(rows, self.variance).view(n, h, w, c).permute(0, 3, 1, 2)
        else:
            mean, comp = self.state["mean"], self.state["components"]
            out = ((x.flatten(1) - mean) @ comp.T @ comp + mean).view_as(x)
        return out.clamp(0, 1)

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

    @classmethod
    def _from_params(cls, params: dict[str, Any], meta_path: Path, model) -> Detector:
        """As :meth:`Detector._from_params`; a file saved before ``pca`` / ``rule`` existed (issue 16) loads
        with the behaviour it was fitted with: ``pca="dataset"``, ``rule="calibrated"``."""
        if "pca" not in params and "rule" not in params:
            params = {**params, "pca": "dataset", "rule": "calibrated"}
        return super()._from_params(params, meta_path, model)

    def compare(self, d_o: torch.Tensor, d_g: torch.Tensor) -> torch.Tensor:
        """Step 5: the score ``[N]`` from ``D_o`` ``[N]`` and the benign deviations ``D_g`` ``[copies,N]``:
        ``median(D_g) − D_o`` (``rule="paper"``; the median of an even count is the mean of the two middle
        values) or ``(mean(D_g) − D_o) / std(D_g)`` (``rule="calibrated"``)."""
        if self.rule == "paper":
            return d_g.quantile(0.5, dim=0) - d_o
        return (d_g.mean(0) - d_o) / d_g.std(0).clamp_min(1e-6)

    def deviations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1–4 and 5's measurement: ``D_o`` ``[N]`` and ``D_g`` ``[copies,N]`` of images ``x`` ``[N,3,H,W]``."""
        n, k = len(x), self.copies
        xc = self.clean(x)
        copies = self.benign_copies(x, xc)
        with torch.no_grad():
            target = self.model(xc).argmax(1)
        h_c = self._maps(xc, target)
        h_o = self._maps(x, target)
        h_g = self._maps(copies, target.repeat(k)).view(k, n, *h_c.shape[1:])
        d_g = cosine(h_c.expand(k, *h_c.shape).flatten(0, 1), h_g.flatten(0, 1)).view(k, n)
        return cosine(h_c, h_o), d_g

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return self.compare(*self.deviations(x))
