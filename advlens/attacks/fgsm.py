"""FGSM and the seed-001 iterative FGSM (eps raised until the label flips)."""
from __future__ import annotations

import math
import time

import torch

from .._checks import AdvlensError, check_number
from .base import AttackResult, check_objective, finish, objective_grad, register_attack

__all__ = ["fgsm", "ifgsm"]


@register_attack("fgsm")
def fgsm(
    model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0,
    eps: float = 8 / 255, loss_fn=None, explainer=None,
) -> AttackResult:
    """Fast Gradient Sign Method (Goodfellow et al.; seed 003 §3.1): ``x + eps·sign(∇x J)``.

    Untargeted ascends ``CE(y)``; targeted descends ``CE(target)``. Result clipped to [0,1].

    Args:
        eps: L∞ budget in (0, 1] ([0,1] pixel units; seed 003 uses 0.01, 0.05, 0.075, 0.1).
        loss_fn, explainer: extra objective term, see :mod:`advlens.attacks.base`.

    Shape: ``x`` ``[N,3,H,W]`` in [0,1] → ``x_adv`` same shape.
    """
    eps = check_number(eps, "eps", 0, 1)
    check_objective(loss_fn, explainer)
    start = time.perf_counter()
    grad, _ = objective_grad(model, x, y, target, loss_fn, explainer)
    x_adv = torch.clamp(x + eps * grad.sign(), 0.0, 1.0)
    return finish(model, x_adv, y, target, start, {"method": "fgsm", "eps": eps})


@register_attack("ifgsm")
def ifgsm(
    model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0,
    eps_step: float = 1 / 255, max_eps: float = 32 / 255, loss_fn=None, explainer=None,
) -> AttackResult:
    """Iterative FGSM of seed 001 (§2, "gradual increase in perturbation until the label changes").

    The FGSM direction ``sign(∇x J)`` at ``x`` is scaled by ``eps = k·eps_step`` for
    ``k = 1, 2, …`` up to ``max_eps``; each image keeps the smallest eps that flips its label
    (reaches ``target`` if given). Images that never flip keep ``max_eps`` and ``success=False``.

    Returns:
        :class:`AttackResult` with ``extras["eps"]`` ``[N]``: the minimal flipping eps
        (NaN where the attack failed).
    """
    eps_step, max_eps = check_number(eps_step, "eps_step", 0, 1), check_number(max_eps, "max_eps", 0, 1)
    if eps_step > max_eps:
        raise AdvlensError(f"eps_step must be <= max_eps, got eps_step={eps_step:g} > max_eps={max_eps:g}")
    check_objective(loss_fn, explainer)
    start = time.perf_counter()
    grad, _ = objective_grad(model, x, y, target, loss_fn, explainer)
    direction = grad.sign()
    n_steps = max(1, int(math.floor(max_eps / eps_step + 1e-9)))
    found = torch.full((len(x),), float("nan"), device=x.device)
    x_adv = torch.clamp(x + max_eps * direction, 0.0, 1.0)
    active = torch.arange(len(x), device=x.device)
    with torch.no_grad():
        for k in range(1, n_steps + 1):
            if active.numel() == 0:
                break
            eps = k * eps_step
            cand = torch.clamp(x[active] + eps * direction[active], 0.0, 1.0)
            pred = model(cand).argmax(1)
            hit = pred == target[active] if target is not None else pred != y[active]
            x_adv[active[hit]] = cand[hit]
            found[active[hit]] = eps
            active = active[~hit]
    params = {"method": "ifgsm", "eps_step": eps_step, "max_eps": max_eps}
    return finish(model, x_adv, y, target, start, params, {"eps": found})
