"""MASK: meaningful perturbation (Fong & Vedaldi, ICCV 2017), the perturbation-guided interpreter of seed 004.

A low-resolution preservation mask ``m`` (1 = keep the pixel, 0 = replace it with a blurred copy) is
optimised so that the target class's probability drops while as little of the image as possible is
deleted (seed 004 eq. 12)::

    ℓ_map(m; x) = l1 · mean|1 − M| + tv · TV_β(M) + p_y(Φ(x; M)),     Φ(x; M) = M ⊙ x + (1 − M) ⊙ blur(x)

with ``M`` the bilinear upsampling of ``m`` to the image size and ``p_y`` the softmax probability of the
target. Defaults follow the ADV² / AdvEdge code for MASK (REFERENCE.md): 28×28 mask, init 0.5, blur kernel 11
and σ 10, ``l1 = 0.01``, ``tv = 1e-4``, ``β = 3``, Adam (AMSGrad variant, as that code) with lr 0.1 for 500
iterations, ``m`` clamped to [0, 1] after each step. The map is ``1 − M`` (deleted = important).

The attack on MASK (seed 004 eq. 13) differentiates one step of ``ℓ_map`` through ``x``; :func:`mask_loss` is
that objective, differentiable in both ``m_low`` and ``x``, and :func:`optimize_mask` warm-starts from a
previous mask.
"""
from __future__ import annotations

import kornia
import torch
from torch import Tensor
from torch.nn import functional as F

from .._checks import AdvlensError, check_images, check_int, check_number
from ..models.wrapper import ClassifierModel
from .engine import check_model, resolve_target
from .methods import register_method

__all__ = ["blur", "mask", "mask_loss", "optimize_mask", "tv_norm", "upsample_mask"]


def blur(x: Tensor, kernel: int = 11, sigma: float = 10.0) -> Tensor:
    """Gaussian blur on ``x``'s device (reflect border, as OpenCV's default), kernel shrunk for tiny images.

    Shape: ``[N,C,H,W]`` → ``[N,C,H,W]``.
    """
    side = min(x.shape[-2:])
    k = min(int(kernel), 2 * ((side - 1) // 2) + 1)  # odd, and reflect padding needs k // 2 < side
    if k < 3:
        return x
    return kornia.filters.gaussian_blur2d(x, (k, k), (float(sigma), float(sigma)), border_type="reflect")


def tv_norm(m: Tensor, beta: float = 3.0) -> Tensor:
    r"""Total variation :math:`\sum_{i,j} \big((m_{i+1,j}-m_{i,j})^2 + (m_{i,j+1}-m_{i,j})^2\big)^{\beta/2}` per map.

    The sum runs over the ``(H−1)×(W−1)`` pixels that have both neighbours (Fong & Vedaldi's TV_β; the
    ADV² code sums the same quantity, without the 1e-8 it adds inside the power since β = 3 > 1 keeps the
    gradient finite at 0).

    Shape: ``[N,1,H,W]`` → ``[N]``.
    """
    dy = m[:, :, 1:, :-1] - m[:, :, :-1, :-1]
    dx = m[:, :, :-1, 1:] - m[:, :, :-1, :-1]
    return (dx.square() + dy.square()).pow(beta / 2.0).flatten(1).sum(1)


def upsample_mask(m_low: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (half-pixel centres) upsampling of ``m_low`` ``[N,1,h,w]`` to ``[N,1,*size]``."""
    if tuple(m_low.shape[-2:]) == tuple(size):
        return m_low
    return F.interpolate(m_low, size=tuple(size), mode="bilinear", align_corners=False)


def mask_loss(
    model: ClassifierModel,
    m_low: Tensor,
    x: Tensor,
    target: Tensor,
    blurred: Tensor,
    l1: float = 0.01,
    tv: float = 1e-4,
    tv_beta: float = 3.0,
) -> Tensor:
    """MASK objective ℓ_map of seed 004 eq. 12 (Fong & Vedaldi eq. 3 with the TV prior), per image.

    ``l1 · mean|1 − M| + tv · TV_β(M) + softmax(model(Φ(x; M)))[target]`` with ``M`` = ``m_low`` upsampled
    bilinearly to the image size and ``Φ(x; M) = M ⊙ x + (1 − M) ⊙ blurred``. Differentiable in ``m_low`` and
    ``x`` (``create_graph`` through it gives the one-step update of seed 004 eq. 13).

    Args:
        model: the classifier (its parameters are not touched).
        m_low: preservation mask in [0, 1] ``[N,1,h,w]``.
        x: images ``[N,3,H,W]`` in [0,1].
        target: class per image ``[N]`` (long).
        blurred: ``blur(x)`` ``[N,3,H,W]`` (pass it detached or not, as the caller needs).
        l1, tv, tv_beta: weights of the deletion-area term and of the TV_β smoothness prior.

    Returns:
        ``[N]``, each image's objective (images are independent, so ``loss.sum()`` optimises all at once).
    """
    m = upsample_mask(m_low, tuple(x.shape[-2:]))
    phi = m * x + (1.0 - m) * blurred
    p = F.softmax(model(phi), dim=1).gather(1, target.view(-1, 1)).squeeze(1)
    area = (1.0 - m).abs().flatten(1).mean(1)
    return l1 * area + tv * tv_norm(m, tv_beta) + p


def optimize_mask(
    model: ClassifierModel,
    x: Tensor,
    target: int | Tensor | None = None,
    steps: int = 500,
    lr: float = 0.1,
    mask_size: int = 28,
    blur_kernel: int = 11,
    blur_sigma: float = 10.0,
    l1: float = 0.01,
    tv: float = 1e-4,
    tv_beta: float = 3.0,
    init: float = 0.5,
    m0: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """Optimise the MASK objective (:func:`mask_loss`) for all images at once; return the low-res mask.

    All ``N`` masks are one parameter tensor and the per-image losses are summed: Adam is elementwise and
    each loss only depends on its own mask, so images stay independent of each other. ``m`` is clamped to
    [0, 1] after each step. The procedure is deterministic (``seed`` is set for any randomness in the
    model's forward; the optimisation itself draws nothing).

    Args:
        model: classifier; x: ``[N,3,H,W]`` in [0,1]; target: None = predicted class, int, or ``[N]``.
        steps, lr: Adam iterations and learning rate (0 steps return the initial mask).
        mask_size: side of the mask, ``min(mask_size, H, W)`` is used.
        blur_kernel, blur_sigma: Gaussian blur of the replacement image ``blur(x)``.
        l1, tv, tv_beta: objective weights (see :func:`mask_loss`).
        init: constant initial mask value (ignored with ``m0``).
        m0: warm start ``[N,1,h,w]`` (e.g. the previous iterate of an attack), cloned and clamped.
        seed: random seed.

    Returns:
        ``m_low`` ``[N,1,h,w]`` in [0,1], detached (1 = preserved).
    """
    check_model(model)
    check_images(x)
    steps, mask_size = check_int(steps, "steps", 0), check_int(mask_size, "mask_size", 1)
    blur_kernel, seed = check_int(blur_kernel, "blur_kernel", 1), check_int(seed, "seed")
    if blur_kernel % 2 == 0:
        raise AdvlensError(f"blur_kernel must be odd, got {blur_kernel}")
    if blur_kernel // 2 >= min(x.shape[-2:]):
        raise AdvlensError(f"blur_kernel={blur_kernel} is too large for images of {x.shape[-2]}x{x.shape[-1]} pixels")
    lr, blur_sigma = check_number(lr, "lr", 0), check_number(blur_sigma, "blur_sigma", 0)
    l1, tv = check_number(l1, "l1", 0, strict=False), check_number(tv, "tv", 0, strict=False)
    tv_beta, init = check_number(tv_beta, "tv_beta", 0), check_number(init, "init", 0, 1, strict=False)
    x = x.detach()
    h, w = x.shape[-2:]
    with torch.no_grad():
        tgt = resolve_target(target, model(x))
        blurred = blur(x, blur_kernel, blur_sigma)
    if m0 is not None:
        if m0.ndim != 4 or m0.shape[:2] != (x.shape[0], 1):
            raise AdvlensError(f"m0 must have shape [{x.shape[0]},1,h,w], got {list(m0.shape)}")
        m = m0.detach().clone().clamp_(0.0, 1.0).to(x)
    else:
        size = (min(mask_size, h), min(mask_size, w))
        m = torch.full((x.shape[0], 1, *size), float(init), device=x.device, dtype=x.dtype)
    m.requires_grad_(True)
    opt = torch.optim.Adam([m], lr=lr, amsgrad=True)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # the caller's RNG state is left alone
        torch.manual_seed(seed)
        for _ in range(int(steps)):
            loss = mask_loss(model, m, x, tgt, blurred, l1, tv, tv_beta).sum()
            (m.grad,) = torch.autograd.grad(loss, m)  # only m: the model's parameters stay untouched
            opt.step()
            with torch.no_grad():
                m.clamp_(0.0, 1.0)
    return m.detach()


@register_method("mask", "own", differentiable=False,
                 why_not="MASK is an optimisation; attack it with the bi-level step (adv2 interpreter='mask')",
                 summary="MASK: optimised deletion mask (Fong & Vedaldi; seed 004 eq. 12)")
def mask(
    model: ClassifierModel,
    x: Tensor,
    target: int | Tensor | None = None,
    steps: int = 500,
    lr: float = 0.1,
    mask_size: int = 28,
    blur_kernel: int = 11,
    blur_sigma: float = 10.0,
    l1: float = 0.01,
    tv: float = 1e-4,
    tv_beta: float = 3.0,
    init: float = 0.5,
    seed: int = 0,
) -> Tensor:
    """MASK attribution map (Fong & Vedaldi; seed 004 eq. 12): ``1 − M``, high where deleting hurts the class.

    Args: see :func:`optimize_mask`.

    Returns:
        Raw map ``[N,H,W]`` in [0, 1] (not min–max normalised), detached: MASK is an optimisation, so
        attacks go through :func:`mask_loss` (seed 004 eq. 13) rather than through this map.

    Shape:
        ``x`` ``[N,3,H,W]`` in [0,1] → ``[N,H,W]``.

    Example:
        >>> m = mask(model, x, steps=100)   # doctest: +SKIP
    """
    m_low = optimize_mask(
        model, x, target, steps=steps, lr=lr, mask_size=mask_size, blur_kernel=blur_kernel,
        blur_sigma=blur_sigma, l1=l1, tv=tv, tv_beta=tv_beta, init=init, seed=seed,
    )
    return 1.0 - upsample_mask(m_low, tuple(x.shape[-2:]))[:, 0]
