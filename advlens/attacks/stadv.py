"""Spatially transformed adversarial examples, StAdv (Xiao et al. 2018; seed 004 eqs. 3, 4, 7, 10)."""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch.nn import functional as F

from .._rng import rand_per_image
from .._checks import check_int, check_number
from ..models.wrapper import ClassifierModel
from .base import (
    AttackResult,
    LossFn,
    check_objective,
    check_weight,
    finish,
    forward_penalty,
    register_attack,
)
from .cw import margin_loss, reached

__all__ = ["flow_loss", "stadv", "warp"]

_FLOW_EPS = 1e-8  # inside the square root of ℓ_flow while optimising: finite gradient at equal flows


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of seed 004 eq. 3: ``x̂(v,u) = x(v + Δv, u + Δu)``, edges replicated.

    ``flow[:, 0]`` is the horizontal ``Δu``, ``flow[:, 1]`` the vertical ``Δv``, in pixels; a zero
    flow returns ``x`` exactly. Uses ``F.grid_sample`` with ``align_corners=False`` on ``x``
    edge-padded to power-of-two sides: there the normalised coordinate of every pixel centre,
    ``(2u + 1)/W' − 1``, is an exact binary fraction, so an integer position maps back to exactly
    that pixel (at other sizes the round trip is off by up to ~1e-5). Edge padding plus
    ``padding_mode="border"`` both repeat the outermost pixels.

    Shape: ``x`` ``[N,C,H,W]``, ``flow`` ``[N,2,H,W]`` → ``[N,C,H,W]``.
    """
    h, w = x.shape[-2:]
    ph, pw = _pow2(h), _pow2(w)
    xp = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate") if (ph, pw) != (h, w) else x
    v = torch.arange(h, device=x.device, dtype=flow.dtype).view(1, h, 1)
    u = torch.arange(w, device=x.device, dtype=flow.dtype).view(1, 1, w)
    gx = (2 * (u + flow[:, 0]) + 1) / pw - 1
    gy = (2 * (v + flow[:, 1]) + 1) / ph - 1
    grid = torch.stack([gx, gy], dim=-1)  # [N,H,W,2], (x, y) order
    return F.grid_sample(xp, grid, mode="bilinear", padding_mode="border", align_corners=False)


def flow_loss(flow: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Flow smoothness ``ℓ_flow`` (seed 004 eq. 4) per image, ``[N,2,H,W]`` → ``[N]``.

    ``Σ_p Σ_{q∈N(p)} sqrt(‖Δu_p − Δu_q‖² + ‖Δv_p − Δv_q‖² + eps)`` over the 4-neighbours ``q`` inside
    the image (each neighbouring pair counted from both sides, as in the double sum).
    """
    dx = flow[..., :, 1:] - flow[..., :, :-1]
    dy = flow[..., 1:, :] - flow[..., :-1, :]
    across = (dx.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1)
    down = (dy.pow(2).sum(1) + eps).sqrt().flatten(1).sum(1)
    return 2 * (across + down)


@register_attack("stadv", norm="flow")
def stadv(
    model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0,
    tau: float = 0.0005, kappa: float = 0.0, steps: int = 300, lr: float = 0.01,
    loss_fn: LossFn | None = None, explainer: dict[str, Any] | None = None, weight: torch.Tensor | None = None,
) -> AttackResult:
    """StAdv: adversarial flow fields (seed 004 eqs. 3–4; with the extra terms of eq. 7 and eq. 10).

    A per-pixel flow ``f`` ``[N,2,H,W]`` (pixels; init ``0.2·(U − 0.5)``, seeded) moves where each
    output pixel samples ``x`` (:func:`warp`, eq. 3). Adam minimises per image

        ``ℓ_prd(x̂) + τ·ℓ_flow(r) + penalty(x̂)``,

    ``ℓ_prd`` = :func:`~advlens.attacks.cw.margin_loss` with κ (eq. 4; targeted or untargeted),
    ``ℓ_flow`` = :func:`flow_loss` (eq. 4, ``eps`` 1e-8 inside the root), ``penalty`` the optional
    extra term of :func:`~advlens.attacks.base.forward_penalty` (``λ·ℓ_int``, eq. 7). The applied
    flow is ``r = N_w ⊙ f`` (eq. 10) with ``weight``, else ``r = f``. Each image keeps the successful
    iterate with the smallest ``ℓ_flow``; images never successful return the last iterate.
    Defaults follow AdvEdge's code (τ = 0.0005, Adam lr 0.01); seed 004 calls τ ``λ``.

    Args:
        tau: weight τ ≥ 0 of ``ℓ_flow``. kappa: confidence κ ≥ 0. steps: Adam steps. lr: Adam rate.
        loss_fn, explainer: extra objective term, see :func:`~advlens.attacks.base.forward_penalty`.
        weight: optional ``[N|1,1|3,H,W]`` per-pixel ``N_w ≥ 0`` (3 channels are averaged); 0 pins a pixel.
        seed: the flow's random start, drawn per image from the image's content (:mod:`advlens._rng`),
            so results do not depend on the batch (its size, the other images, the order).

    Returns:
        :class:`AttackResult`; ``extras["flow"]`` ``[N,2,H,W]`` the applied flow ``r`` of the kept
        result, ``extras["flow_loss"]`` ``[N]`` its ``ℓ_flow`` (without ``eps``), ``extras["reached"]``
        ``[N]`` bool: the goal was reached with confidence κ (``success`` is only ``pred ≠ y``).

    Shape: ``x`` ``[N,3,H,W]`` in [0,1] → ``x_adv`` same shape, in [0,1].

    Example:
        >>> res = al.attack(model, x, y, method="stadv", tau=0.0005, steps=10)
        >>> res.x_adv.shape, res.extras["flow_loss"].shape   # flow_loss: [N]
        (torch.Size([4, 3, 32, 32]), torch.Size([4]))
    """
    tau, kappa = check_number(tau, "tau", 0, strict=False), check_number(kappa, "kappa", 0, strict=False)
    lr, steps = check_number(lr, "lr", 0), check_int(steps, "steps", 1)
    check_objective(loss_fn, explainer)
    start = time.perf_counter()
    x = x.detach()
    weight = check_weight(weight, x)
    if weight is not None:
        weight = weight.mean(1, keepdim=True)
    n, _, h, w = x.shape
    f = 0.2 * (rand_per_image(x, seed, shape=(2, h, w)) - 0.5)
    f.requires_grad_(True)
    opt = torch.optim.Adam([f], lr=lr)
    best_x, best_flow = x.clone(), torch.zeros_like(f)
    best_loss = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        with torch.enable_grad():
            r = f if weight is None else weight * f
            xa = warp(x, r).clamp(0.0, 1.0)  # bilinear weights may sum to 1 + 1 ulp
            logits, pen = forward_penalty(model, xa, loss_fn, explainer)
            per_image = margin_loss(logits, y, target, kappa) + tau * flow_loss(r, _FLOW_EPS)
            if pen is not None:
                per_image = per_image + pen
            (f.grad,) = torch.autograd.grad(per_image.sum(), f)  # not .backward(): leaves model grads alone
        with torch.no_grad():  # before the step: without weight, r is f, which the step changes in place
            ok = reached(logits, y, target, kappa)
            smooth = flow_loss(r.detach())
            better = ok & (~found | (smooth < best_loss))
            keep = better | (~found & ~ok)  # the smoothest success, else the latest iterate
            found |= ok
            best_loss = torch.where(keep, smooth, best_loss)
            best_x = torch.where(keep[:, None, None, None], xa.detach(), best_x)
            best_flow = torch.where(keep[:, None, None, None], r.detach(), best_flow)
        opt.step()
    params = {"method": "stadv", "tau": tau, "kappa": kappa, "steps": steps, "lr": lr, "seed": seed}
    return finish(model, best_x, y, target, start, params, {"flow": best_flow, "flow_loss": best_loss, "reached": found})
