"""Rank agreement of maps: Kendall τ-b, batched on the device (seed 004's interpretation-robustness measure)."""
from __future__ import annotations


import torch
import torch.nn.functional as F

from advlens._checks import AdvlensError
from advlens.metrics._validate import check_pair, flatten
from advlens.metrics.similarity import as_images

__all__ = ["kendall_tau"]

# Elements of one [n, r, P] block of pairwise signs in kendall_tau (16 MiB in float32). Must stay below 2**24 so
# that the per-block sums of +-1 products are exact in float32.
_PAIR_BUDGET = 2**22


def kendall_tau(a: torch.Tensor, b: torch.Tensor, size: int | None = 32) -> torch.Tensor:
    r"""Kendall rank correlation :math:`\tau_b` between the values of each pair of maps.

    .. math::

        \tau_b = \frac{\sum_{j<k} \operatorname{sgn}(a_j - a_k)\operatorname{sgn}(b_j - b_k)}
                      {\sqrt{\sum_{j<k} \lvert\operatorname{sgn}(a_j - a_k)\rvert \cdot
                             \sum_{j<k} \lvert\operatorname{sgn}(b_j - b_k)\rvert}}
              = \frac{n_c - n_d}{\sqrt{(n_0 - n_1)(n_0 - n_2)}}

    (concordant minus discordant pairs over the pairs not tied in each map), the tau-b of
    :func:`scipy.stats.kendalltau`, ties included. It compares the *ranking* of the pixels only.

    The sum runs over all :math:`P(P-1)/2` pixel pairs, computed on the device as products of pairwise
    signs, in blocks of at most ``2**22`` pairs (memory stays bounded whatever the batch); the sums are
    exact integers. Because the cost grows as :math:`O(P^2)` (a 224x224 map has 1.3e9 pairs), maps larger
    than ``size`` x ``size`` are first reduced by adaptive average pooling to at most ``size`` per side
    (1024 pixels, 5e5 pairs at the default 32). The result is then the :math:`\tau_b` of the pooled maps, an
    approximation of the full-resolution value (Grad-CAM maps are upsampled from coarse layers, so little
    is lost); it is exact for maps no larger than ``size`` on both sides, and ``size=None`` never pools.

    Args:
        a: first batch.
        b: second batch, same shape as ``a``.
        size: largest side kept before the pairwise count, or ``None`` for no pooling.

    Returns:
        :math:`\tau_b` per sample in :math:`[-1, 1]`; **NaN** where either sample is constant (no untied pair,
        :math:`\tau` undefined, as in scipy). Not differentiable.

    Shape:
        - a, b: :math:`(N, H, W)` or :math:`(N, C, H, W)` (pooled per channel, ranked over all values).
        - Output: :math:`(N)`.

    Example:
        >>> a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
        >>> kendall_tau(a, a), kendall_tau(a, -a)
        (tensor([1.]), tensor([-1.]))
    """
    a, b = check_pair(a, b)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise AdvlensError(f"size must be a positive int or None, got {size!r}")
    out_dtype = a.dtype
    x, y = as_images(a), as_images(b)
    h, w = x.shape[-2:]
    if size is not None and (h > size or w > size):
        target = (min(h, size), min(w, size))
        x, y = F.adaptive_avg_pool2d(x, target), F.adaptive_avg_pool2d(y, target)
    # Signs of differences are exact in any IEEE float; float32 keeps the block sums exact.
    x = flatten(x).detach().to(torch.float32 if x.dtype != torch.float64 else torch.float64)
    y = flatten(y).detach().to(x.dtype)
    n, p = x.shape
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    s = torch.zeros(n, dtype=acc, device=x.device)
    ta, tb = torch.zeros_like(s), torch.zeros_like(s)
    n_step = max(1, min(n, _PAIR_BUDGET // (p * p)))
    r_step = max(1, min(p, _PAIR_BUDGET // (n_step * p)))
    for i in range(0, n, n_step):
        xi, yi = x[i : i + n_step], y[i : i + n_step]
        for j in range(0, p, r_step):
            sa = torch.sign(xi[:, j : j + r_step, None] - xi[:, None, :])
            sb = torch.sign(yi[:, j : j + r_step, None] - yi[:, None, :])
            s[i : i + n_step] += (sa * sb).sum(dim=(1, 2)).to(acc)
            ta[i : i + n_step] += sa.abs().sum(dim=(1, 2)).to(acc)
            tb[i : i + n_step] += sb.abs().sum(dim=(1, 2)).to(acc)
    # Ordered pairs count each unordered pair twice, in numerator and denominator alike.
    return (s / torch.sqrt(ta * tb)).to(out_dtype)
