r"""Similarity of explanation maps and images, one value per sample.

Every function compares two batches of the same shape, ``[N, H, W]`` maps (as returned by
:func:`advlens.explain`) or ``[N, C, H, W]`` images, and returns a ``Tensor [N]`` on the inputs' device
in their floating dtype. Reduction over the batch is left to the caller (see :mod:`advlens.metrics.aggregate`).
Nothing leaves the device; :func:`cosine`, :func:`l1`, :func:`ssim` and :func:`nissim` are differentiable.

==================  =========================================  ============  ==================
function            value                                      range         reference
==================  =========================================  ============  ==================
:func:`cosine`      cosine of the flattened samples            [-1, 1]       seed 000 eq. 5, seed 002 eq. 6
:func:`ssim`        mean SSIM (Gaussian window)                [-1, 1]       Wang et al. 2004
:func:`nissim`      ``(1 - SSIM) / 2``                         [0, 1]        seed 003 eq. 1
:func:`l1`          mean absolute difference                   [0, max|a-b|]
:func:`iou`         IoU of the binarized maps                  [0, 1]
:func:`kendall_tau` Kendall rank correlation :math:`\tau_b`    [-1, 1]
==================  =========================================  ============  ==================
"""
from __future__ import annotations

import math

import kornia
import torch
from torch import nn

from advlens._checks import AdvlensError
from advlens.metrics._validate import check_data_range, check_pair, flatten

__all__ = ["cosine", "ssim", "nissim", "l1", "iou", "Cosine", "SSIM", "NISSIM", "L1"]

def as_images(x: torch.Tensor) -> torch.Tensor:
    """``[N,H,W] -> [N,1,H,W]``; ``[N,C,H,W]`` unchanged."""
    return x.unsqueeze(1) if x.ndim == 3 else x


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Cosine similarity of each pair of samples, flattened to vectors.

    .. math::

        \cos(a_i, b_i) = \frac{\langle a_i, b_i \rangle}{\lVert a_i \rVert_2 \, \lVert b_i \rVert_2}

    The layer-wise behaviour deviation of seed 000 (eq. 5) and seed 002 (eq. 6): the Grad-CAM map of the
    natural image against the map of the adversarial (or noisy) image, both vectorized.

    A map that is all zero (Grad-CAM gives one when every weighted activation is negative) has no direction,
    so the ratio is undefined; this function defines it: **both samples zero -> 1.0** (identical maps),
    **exactly one zero -> 0.0** (no shared direction). :func:`torch.nn.functional.cosine_similarity` gives
    0.0 in both cases.

    Args:
        a: first batch.
        b: second batch, same shape as ``a``.

    Returns:
        The cosine similarity per sample, in :math:`[-1, 1]` up to rounding. Differentiable (the gradient is
        zero where a sample is all zero).

    Shape:
        - a, b: :math:`(N, H, W)` or :math:`(N, C, H, W)`.
        - Output: :math:`(N)`.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
        >>> cosine(a, torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]]]))
        tensor([0.7071, 1.0000])
    """
    a, b = check_pair(a, b)
    fa, fb = flatten(a), flatten(b)
    na = torch.linalg.vector_norm(fa, dim=1)
    nb = torch.linalg.vector_norm(fb, dim=1)
    za, zb = na == 0, nb == 0
    one = torch.ones_like(na)
    # Normalize each vector before the dot product: the product of two tiny norms could underflow to 0.
    ua = fa / torch.where(za, one, na).unsqueeze(1)
    ub = fb / torch.where(zb, one, nb).unsqueeze(1)
    out = (ua * ub).sum(dim=1)
    out = torch.where(za | zb, torch.zeros_like(out), out)
    return torch.where(za & zb, torch.ones_like(out), out)


def _check_window(window_size: object, sigma: object, padding: object, shape: torch.Size) -> tuple[int, float, str]:
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise AdvlensError(f"window_size must be an odd positive int, got {window_size!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < float(sigma) < math.inf:
        raise AdvlensError(f"sigma must be a positive number, got {sigma!r}")
    pad = str(padding).lower()
    if pad not in ("same", "valid"):
        raise AdvlensError(f"padding must be 'same' or 'valid', got {padding!r}")
    h, w = int(shape[-2]), int(shape[-1])
    radius = window_size // 2
    if pad == "same" and min(h, w) <= radius:
        raise AdvlensError(
            f"SSIM with window_size={window_size} needs maps larger than {radius}x{radius} "
            f"(reflect padding), got shape {list(shape)}; pass a smaller window_size"
        )
    if pad == "valid" and min(h, w) < window_size:
        raise AdvlensError(
            f"SSIM with padding='valid' needs maps of at least {window_size}x{window_size}, got shape {list(shape)}"
        )
    return window_size, float(sigma), pad


def _ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int, sigma: float, data_range: float, padding: str):
    """SSIM index map ``[N, C, H', W']`` (Wang et al. 2004) with a separable Gaussian window.

    Same formula and window as :func:`kornia.metrics.ssim` (agreement to 1e-9 at sigma 1.5, see the
    tests), but the five local moments are filtered in ONE call of kornia's separable filter
    (2·k taps instead of k²) as one-channel images, and ``'valid'`` computes no border at all —
    about 5× faster than ``kornia.metrics.ssim`` on 224×224 maps on a CPU.
    """
    out_dtype = x.dtype
    # Half-precision moments can overflow or cancel; filter in float32 like kornia.
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    x, y = x.to(dtype), y.to(dtype)
    kernel = kornia.filters.get_gaussian_kernel1d(window_size, sigma, device=x.device, dtype=dtype)
    n, c, h, w = x.shape
    # one-channel images in the batch dimension: a plain (not depthwise) convolution, much faster on CPU
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(n * 5 * c, 1, h, w)
    moments = kornia.filters.filter2d_separable(stack, kernel, kernel, border_type="reflect", padding=padding)
    mu1, mu2, xx, yy, xy = moments.reshape(n, 5 * c, *moments.shape[-2:]).split(c, dim=1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    num = (2.0 * mu1_mu2 + c1) * (2.0 * (xy - mu1_mu2) + c2)
    den = (mu1_sq + mu2_sq + c1) * (xx - mu1_sq + yy - mu2_sq + c2)
    return (num / den).to(out_dtype)


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    padding: str = "valid",
) -> torch.Tensor:
    r"""Mean structural similarity (SSIM) of each pair of maps or images, with a Gaussian window.

    .. math::

        \text{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                                 {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
        \qquad C_1 = (0.01\,L)^2,\quad C_2 = (0.03\,L)^2

    with local means, variances and covariance weighted by a sampled, normalized Gaussian window of
    ``window_size`` taps and standard deviation ``sigma`` (population covariance, as in Wang et al. 2004),
    :math:`L` = ``data_range``. The SSIM map is averaged over channels and pixels of each sample.
    Computed by :func:`kornia.metrics.ssim` (with ``eps=0``) for ``sigma=1.5``, by the same formula over
    :func:`kornia.filters.filter2d_separable` otherwise.

    Borders: with ``padding='same'`` the moments are filtered after **reflect** padding
    (torch's ``'reflect'``: ``c b | a b c``, the edge pixel not repeated) and every pixel of the map is
    averaged. ``padding='valid'`` averages only the pixels whose window lies inside the image (a strip of
    ``window_size // 2`` dropped on every side; the default, so values compare with published ones);
    with the defaults it equals
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=L)`` (which also crops that strip), up to float rounding, as do torchmetrics and
    pytorch-msssim. The ``'same'`` mean differs from those by the border strip: measured up to
    0.03 on 32x32, 0.01 on 64x64 and 0.002-0.01 on 224x224 maps (noise, smooth maps).

    Maps ``[N,H,W]`` are treated as one-channel images. Inputs are not rescaled: maps from
    :func:`advlens.explain` are in [0, 1], hence ``data_range=1.0``.

    Args:
        a: first batch.
        b: second batch, same shape as ``a``.
        window_size: taps of the Gaussian window (odd). 11 with ``sigma=1.5`` follows Wang et al. 2004.
        sigma: standard deviation of the window, in pixels.
        data_range: the dynamic range :math:`L` of the values.
        padding: ``'same'`` (reflect padding, whole map averaged) or ``'valid'`` (border strip dropped).

    Returns:
        The mean SSIM per sample, in :math:`[-1, 1]`; 1 for identical inputs. Differentiable.

    Shape:
        - a, b: :math:`(N, H, W)` or :math:`(N, C, H, W)`, with :math:`H, W > \text{window\_size} // 2`
          (``'same'``) or :math:`\geq \text{window\_size}` (``'valid'``).
        - Output: :math:`(N)`.

    Example:
        >>> a = torch.rand(2, 32, 32)
        >>> ssim(a, a)
        tensor([1., 1.])
    """
    a, b = check_pair(a, b)
    window_size, sigma, padding = _check_window(window_size, sigma, padding, a.shape)
    data_range = check_data_range(data_range)
    return _ssim_map(as_images(a), as_images(b), window_size, sigma, data_range, padding).mean(dim=(1, 2, 3))


def nissim(a: torch.Tensor, b: torch.Tensor, **ssim_kw) -> torch.Tensor:
    r"""Normalized Inverted SSIM, a dissimilarity of maps (seed 003, eq. 1).

    .. math::

        \text{NISSIM}_i = \frac{1 - \text{SSIM}_i}{2}

    0 for identical maps, 1 for perfectly anti-correlated ones (seed 003 states the range as (0, 1]; it is
    [0, 1]). The per-sample values are what :func:`advlens.metrics.mod` averages (seed 003, eq. 2).

    Args:
        a: first batch (seed 003: the Grad-CAM maps of the clean images).
        b: second batch, same shape (the maps of the adversarial images).
        **ssim_kw: ``window_size``, ``sigma``, ``data_range``, ``padding``, passed to :func:`ssim`.

    Returns:
        NISSIM per sample, in :math:`[0, 1]`. Differentiable.

    Shape:
        - a, b: :math:`(N, H, W)` or :math:`(N, C, H, W)`.
        - Output: :math:`(N)`.

    Example:
        >>> a = torch.rand(2, 32, 32)
        >>> nissim(a, a)
        tensor([0., 0.])
    """
    return (1.0 - ssim(a, b, **ssim_kw)) / 2.0


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Mean absolute difference of each pair of samples.

    .. math::

        L_1(a_i, b_i) = \frac{1}{D} \sum_{j=1}^{D} \lvert a_{ij} - b_{ij} \rvert

    over the :math:`D` values of a sample; in [0, 1] for maps in [0, 1].

    Args:
        a: first batch.
        b: second batch, same shape as ``a``.

    Returns:
        The mean absolute difference per sample. Differentiable.

    Shape:
        - a, b: :math:`(N, H, W)` or :math:`(N, C, H, W)`.
        - Output: :math:`(N)`.

    Example:
        >>> l1(torch.zeros(1, 2, 2), torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]))
        tensor([0.5000])
    """
    a, b = check_pair(a, b)
    return flatten(a - b).abs().mean(dim=1)


def _binarize(x: torch.Tensor, top_k: float, threshold: float | None) -> torch.Tensor:
    if x.dtype == torch.bool:
        return flatten(x)
    flat = flatten(x)
    if threshold is not None:
        return flat >= threshold
    k = max(1, int(round(top_k * flat.shape[1])))
    kth = torch.topk(flat, k, dim=1).values[:, -1:]
    return flat >= kth


def iou(a: torch.Tensor, b: torch.Tensor, top_k: float = 0.1, threshold: float | None = None) -> torch.Tensor:
    r"""Intersection over union of the binarized maps of each pair.

    .. math::

        \text{IoU}(a_i, b_i) = \frac{\lvert M(a_i) \cap M(b_i) \rvert}{\lvert M(a_i) \cup M(b_i) \rvert}

    Each map is binarized on its own: with ``threshold=None``, :math:`M` keeps the pixels whose value is at
    least the map's :math:`k`-th largest value, :math:`k = \max(1, \operatorname{round}(\text{top\_k} \cdot D))`
    (all values tied with the :math:`k`-th are kept, so the mask is deterministic and can be larger than
    :math:`k`: a constant map keeps every pixel; pass ``threshold`` for maps with large tied regions); with a
    ``threshold``, :math:`M` keeps the values ``>= threshold``. A bool tensor (e.g. a ground-truth object mask
    from the ``shapes`` data) is used as its own mask. When both masks are empty the IoU is defined as 1.0.

    Args:
        a: first batch (float maps or a bool mask).
        b: second batch, same shape as ``a`` (float maps or a bool mask).
        top_k: fraction of the values of each sample kept, in (0, 1]; ignored when ``threshold`` is given.
        threshold: keep the values ``>= threshold`` instead of the top fraction.

    Returns:
        IoU per sample, in [0, 1]. Not differentiable.

    Shape:
        - a, b: :math:`(N, H, W)` or :math:`(N, C, H, W)` (the mask is taken over all values of a sample).
        - Output: :math:`(N)`.

    Example:
        >>> a = torch.tensor([[[0.9, 0.8], [0.1, 0.0]]])
        >>> b = torch.tensor([[[0.9, 0.1], [0.8, 0.0]]])
        >>> iou(a, b, threshold=0.5)
        tensor([0.3333])
    """
    a, b = check_pair(a, b, allow_bool=True)
    if threshold is None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not 0 < top_k <= 1:
            raise AdvlensError(f"top_k must be a fraction in (0, 1], got {top_k!r}")
    else:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise AdvlensError(f"threshold must be a finite number or None, got {threshold!r}")
    floats = [t.dtype for t in (a, b) if t.dtype != torch.bool]
    dtype = floats[0] if floats else torch.get_default_dtype()
    ma, mb = _binarize(a, top_k, threshold), _binarize(b, top_k, threshold)
    inter = (ma & mb).sum(dim=1).to(dtype)
    union = (ma | mb).sum(dim=1).to(dtype)
    out = inter / torch.where(union > 0, union, torch.ones_like(union))
    return torch.where(union > 0, out, torch.ones_like(out))


class Cosine(nn.Module):
    """Module form of :func:`cosine`."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cosine(a, b)


class L1(nn.Module):
    """Module form of :func:`l1`."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return l1(a, b)


class SSIM(nn.Module):
    """Module form of :func:`ssim`; the arguments are stored as given."""

    def __init__(self, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0, padding: str = "valid"):
        super().__init__()
        self.window_size, self.sigma, self.data_range, self.padding = window_size, sigma, data_range, padding

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ssim(a, b, self.window_size, self.sigma, self.data_range, self.padding)


class NISSIM(SSIM):
    """Module form of :func:`nissim` (seed 003, eq. 1), e.g. as a differentiable map-dissimilarity loss."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (1.0 - super().forward(a, b)) / 2.0
