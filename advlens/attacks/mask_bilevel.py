"""The MASK interpreter inside an attack: seed 004's bi-level approximation (eq. 13).

MASK is itself an optimisation (``m_*(x) = argmin_m ℓ_map(m; x)``), so its map is not a function an
attack can differentiate directly. Following Zhang et al. (ADV²) as seed 004 describes it, every
attack iteration

1. advances the mask on the current ``x̂`` by ``inner_steps`` of Adam on ``ℓ_map`` (warm start), and
   every ``refresh`` iterations replaces it by a full MASK run on the latest ``x̂`` (the paper: "every
   50 iterations"), which also resets Adam;
2. returns the map of ``m' = m − α ∇_m ℓ_map(m; x̂)``, a differentiable function of ``x̂`` through
   ``∇_m ℓ_map`` (``create_graph``), so ``ℓ_int`` of that map can be back-propagated to ``x̂``.

The state (the current mask, the iteration count) lives in the dict this function returns, which
the attack's loss object keeps between iterations.
"""
from __future__ import annotations

from typing import Any

import torch

from ..explain.api import normalize_maps
from ..explain.mask import blur, mask_loss, optimize_mask, upsample_mask
from ..models.wrapper import ClassifierModel

__all__ = ["mask_map_step"]


def mask_map_step(
    model: ClassifierModel,
    xa: torch.Tensor,
    cls: torch.Tensor,
    state: dict[str, Any] | None,
    options: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One attack iteration's MASK map of ``xa`` for classes ``cls`` (see the module docstring).

    Args:
        xa: ``[N,3,H,W]`` adversarial iterate (requires grad).
        cls: ``[N]`` the class each map explains.
        state: the previous call's state, or None on the first iteration.
        options: ``mask_options`` (MASK's own parameters, e.g. ``steps``), ``refresh`` (50),
            ``inner_steps`` (1), ``mask_alpha`` (α of eq. 13; MASK's learning rate 0.1).

    Returns:
        ``(map [N,H,W] in [0,1], differentiable w.r.t. xa; new state)``.
    """
    mopts = dict(options.get("mask_options", {}))
    refresh, inner = int(options.get("refresh", 50)), int(options.get("inner_steps", 1))
    alpha = float(options.get("mask_alpha", mopts.get("lr", 0.1)))
    it = 0 if state is None else state["it"]
    xd = xa.detach()
    if state is None or it % refresh == 0:
        m_low = optimize_mask(model, xd, cls, **mopts)
    else:
        kw = {k: v for k, v in mopts.items() if k not in ("steps", "init", "mask_size")}
        m_low = optimize_mask(model, xd, cls, steps=inner, m0=state["m_low"], **kw)
    loss_kw = {k: mopts[k] for k in ("l1", "tv", "tv_beta") if k in mopts}
    blurred = blur(xa, mopts.get("blur_kernel", 11), mopts.get("blur_sigma", 10.0))
    with torch.enable_grad():
        m = m_low.clone().requires_grad_(True)
        loss = mask_loss(model, m, xa, cls, blurred, **loss_kw).sum()
        (g,) = torch.autograd.grad(loss, m, create_graph=True)
        m1 = (m - alpha * g).clamp(0.0, 1.0)
    out = normalize_maps(1.0 - upsample_mask(m1, tuple(xa.shape[-2:]))[:, 0])
    return out, {"m_low": m1.detach(), "it": it + 1}
