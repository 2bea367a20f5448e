r"""Reductions of per-sample metrics into the summary numbers of the seeds.

- :func:`mod` and :func:`vid`: Mean Observed Dissimilarity and Variation in Dissimilarity of seed 003
  (eqs. 2-4), from :func:`advlens.metrics.nissim` values.
- :func:`compromise_threshold` and :func:`compromised`: seed 000's rule for a *compromised* layer, from
  per-image, per-layer :func:`advlens.metrics.cosine` similarities under adversarial and Gaussian noise.

All work on tensors and stay on their device.
"""
from __future__ import annotations

import torch

from advlens._checks import AdvlensError
from advlens.metrics._validate import check_tensor

__all__ = ["mod", "vid", "compromise_threshold", "compromised"]

_RULES = ("median", "mean")


def _check_values(x: object, name: str, dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise AdvlensError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise AdvlensError(f"{name} must have at least one dimension, got a 0-dim tensor")
    if not -x.ndim <= dim < x.ndim:
        raise AdvlensError(f"dim={dim} is out of range for {name} of shape {list(x.shape)}")
    return check_tensor(x, name, ndims=tuple(range(1, max(x.ndim, 1) + 1)))


def mod(nissim_values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    r"""Mean Observed Dissimilarity of an adversarial set (seed 003, eq. 2).

    .. math::

        \text{MOD}_{advset} = \frac{1}{N} \sum_{i=1}^{N} \text{NISSIM}_i

    the mean NISSIM between the clean and adversarial maps over the :math:`N` images attacked at one
    strength :math:`\epsilon`. 0 = the maps did not move; 1 = total dissimilarity. The paper averages over
    images, one Grad-CAM map per image at the last convolutional layer (seed 003 § 4.4); ``[N, L]`` input
    gives one MOD per layer (an extension); averaging over images and layers (``x.flatten()``) is not the
    paper's MOD.

    Args:
        nissim_values: NISSIM values (:func:`advlens.metrics.nissim`), images along ``dim``.
        dim: the image dimension, reduced.

    Returns:
        MOD: a 0-dim tensor for ``[N]`` input; otherwise the input's shape without ``dim`` (e.g. ``[N, L]``
        per image and layer gives ``[L]``, one MOD per layer).

    Shape:
        - nissim_values: :math:`(N)` or :math:`(N, *)`.
        - Output: :math:`()` or :math:`(*)`.

    Example:
        >>> mod(torch.tensor([0.1, 0.2, 0.6]))
        tensor(0.3000)
    """
    x = _check_values(nissim_values, "nissim_values", dim)
    return x.mean(dim=dim)


def vid(mod_per_eps: torch.Tensor, dim: int = 0) -> torch.Tensor:
    r"""Variation in Dissimilarity of a model across attack strengths (seed 003, eqs. 3-4).

    .. math::

        m_h = \frac{1}{E} \sum_{\epsilon} \text{MOD}_{\epsilon}, \qquad
        \text{VID} = \sqrt{\frac{1}{E} \sum_{\epsilon} (\text{MOD}_{\epsilon} - m_h)^2}

    the population standard deviation (divisor :math:`E`, not :math:`E-1`) of the MOD values of the
    :math:`E` strengths. Seed 003 writes the terms as :math:`\text{NISSIM}_\epsilon`, the dissimilarity at
    strength :math:`\epsilon`, i.e. the MOD of that adversarial set. Whether :math:`\epsilon = 0` (MOD = 0)
    is among the strengths is the caller's choice; it changes the value.

    Args:
        mod_per_eps: one MOD per strength along ``dim`` (:func:`mod` of each adversarial set).
        dim: the strength dimension, reduced.

    Returns:
        VID: a 0-dim tensor for ``[E]`` input; otherwise the input's shape without ``dim``.

    Shape:
        - mod_per_eps: :math:`(E)` or :math:`(E, *)`.
        - Output: :math:`()` or :math:`(*)`.

    Example:
        >>> vid(torch.tensor([0.0, 0.2, 0.4, 0.6]))
        tensor(0.2236)
    """
    x = _check_values(mod_per_eps, "mod_per_eps", dim)
    mean = x.mean(dim=dim, keepdim=True)
    return (x - mean).pow(2).mean(dim=dim).sqrt()


def _check_table(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise AdvlensError(f"{name} must be a torch.Tensor of shape [N,L], got {type(x).__name__}")
    if x.ndim != 2:
        raise AdvlensError(f"{name} must have shape [N,L] (images x layers), got {list(x.shape)}")
    return check_tensor(x, name, ndims=(2,))


def compromise_threshold(d_noise_ref: torch.Tensor, rule: str = "median") -> torch.Tensor:
    r"""Per-layer threshold of seed 000: the median (or mean) similarity under Gaussian noise.

    .. math::

        t_l = \operatorname{median}_i \, D_g[i, l]

    where :math:`D_g[i, l]` is the cosine similarity between the layer-:math:`l` Grad-CAM maps of clean image
    :math:`i` and of the same image with Gaussian noise of the adversarial perturbation's mean and std
    (:func:`advlens.matched_noise`) (seed 000, eq. 7). ``rule="median"`` is the paper's (§ III-C and § IV-E);
    ``rule="mean"`` is what the authors' code does (the mean noise similarity at the same strength). The median of an even count is the average of the two middle values (as
    :func:`numpy.median`; :func:`torch.median` would return the lower one).

    Args:
        d_noise_ref: noise similarities :math:`D_g`, images x layers.
        rule: ``"median"`` or ``"mean"``.

    Returns:
        The threshold of each layer.

    Shape:
        - d_noise_ref: :math:`(N, L)`.
        - Output: :math:`(L)`.

    Example:
        >>> compromise_threshold(torch.tensor([[0.9, 0.5], [0.7, 0.6], [0.2, 0.8], [0.8, 0.9]]))
        tensor([0.7500, 0.7000])
    """
    d_g = _check_table(d_noise_ref, "d_noise_ref")
    if rule == "median":
        # torch.quantile interpolates linearly (numpy's median); it needs float32 or float64.
        work = d_g if d_g.dtype in (torch.float32, torch.float64) else d_g.float()
        return torch.quantile(work, 0.5, dim=0).to(d_g.dtype)
    if rule == "mean":
        return d_g.mean(dim=0)
    raise AdvlensError(f"rule must be one of {', '.join(repr(r) for r in _RULES)}, got {rule!r}")


def compromised(d_adv: torch.Tensor, d_noise_ref: torch.Tensor, rule: str = "median") -> torch.Tensor:
    r"""Which layers an adversarial image compromises (seed 000, § III-C, eqs. 6-7).

    .. math::

        \text{compromised}[i, l] = D_a[i, l] < t_l, \qquad t_l = \operatorname{median}_j D_g[j, l]

    A layer is compromised by adversarial image :math:`i` when the cosine similarity :math:`D_a[i, l]` of its
    Grad-CAM map to the clean image's map falls below the layer's threshold :math:`t_l`
    (:func:`compromise_threshold`): the layer deviates more than it does, typically, under Gaussian noise of
    the same strength. The comparison is strict. Row sums give the number of compromised layers per image
    (seed 000, Fig. 7), column means the compromise probability per layer (Fig. 6). The paper counts
    adversarial examples only (§ IV-E): pass the rows of images whose attack succeeded.

    Args:
        d_adv: adversarial similarities :math:`D_a`, images x layers.
        d_noise_ref: noise similarities :math:`D_g`, images x layers (same layers; the images may differ).
        rule: ``"median"`` (paper) or ``"mean"`` (authors' code), see :func:`compromise_threshold`.

    Returns:
        Bool tensor, True where the layer is compromised.

    Shape:
        - d_adv: :math:`(N, L)`.
        - d_noise_ref: :math:`(M, L)`.
        - Output: :math:`(N, L)`, bool.

    Example:
        >>> d_g = torch.tensor([[0.9, 0.5], [0.7, 0.6], [0.2, 0.8], [0.8, 0.9]])
        >>> compromised(torch.tensor([[0.5, 0.8], [0.76, 0.65]]), d_g)  # thresholds [0.75, 0.70]
        tensor([[ True, False],
                [False,  True]])
    """
    d_a = _check_table(d_adv, "d_adv")
    d_g = _check_table(d_noise_ref, "d_noise_ref")
    if d_a.shape[1] != d_g.shape[1]:
        raise AdvlensError(
            f"d_adv and d_noise_ref must have the same number of layers, got {list(d_a.shape)} and {list(d_g.shape)}"
        )
    if d_a.device != d_g.device:
        raise AdvlensError(f"d_adv and d_noise_ref must be on the same device, got {d_a.device} and {d_g.device}")
    return d_a < compromise_threshold(d_g, rule).to(d_a.dtype)
