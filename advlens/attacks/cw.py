"""Carlini & Wagner L2 with a binary search over ``c`` (seed 004 eq. 2, eqs. 6 and 9).

Also home of the pieces C&W shares with StAdv: the margin loss ``f`` / ``ℓ_prd`` (seed 004
eq. 4) and its success test (parameters are checked with :mod:`advlens._checks`).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

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

__all__ = ["cw", "margin_loss"]

# atanh(±(1 − 1e-6)) ≈ ±7.25: pixels at exactly 0 or 1 start at a finite w (Carlini's code
# scales by 0.999999 for the same reason); values strictly inside are mapped exactly.
_TANH_LIMIT = 1.0 - 1e-6
_NO_BOUND = 1e10  # "no upper bound on c yet" (Carlini's convention)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, kappa: float) -> torch.Tensor:
    """C&W's ``f`` / seed 004's ``ℓ_prd`` (eq. 4) on logits ``Z`` ``[N,C]`` → ``[N]``.

    untargeted: ``max(Z_y − max_{i≠y} Z_i, −κ)``; targeted: ``max(max_{i≠t} Z_i − Z_t, −κ)``.
    Seed 004 prints the floor as ``κ``; Carlini & Wagner's ``−κ`` (κ ≥ 0 = confidence) is used.
    """
    cls = y if target is None else target
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(cls, logits.shape[1]).bool(), -math.inf).amax(1)
    margin = own - other if target is None else other - own
    return torch.clamp(margin, min=-kappa)


def reached(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, kappa: float) -> torch.Tensor:
    """``[N]`` bool: the attack's goal holds with confidence ``κ`` (Carlini's ``compare``).

    Untargeted: ``argmax(Z + κ·e_y) ≠ y``; targeted: ``argmax(Z − κ·e_t) = t``; plain argmax at κ = 0.
    """
    z = logits.detach()
    if kappa:
        cls = y if target is None else target
        z = z.scatter_add(1, cls[:, None], torch.full_like(z[:, :1], kappa if target is None else -kappa))
    pred = z.argmax(1)
    return pred != y if target is None else pred == target


def _image(w: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``x̂ = ½(tanh(w)+1)``, or ``x + N_w ⊙ (½(tanh(w)+1) − x)`` (seed 004 eq. 9), in [0,1]."""
    box = 0.5 * (torch.tanh(w) + 1.0)
    if weight is None:
        return box
    return torch.clamp(x + weight * (box - x), 0.0, 1.0)  # clamp only acts where weight > 1


@register_attack("cw", norm="l2")
def cw(
    model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0,
    c: float = 1.0, kappa: float = 0.0, steps: int = 100, lr: float = 0.01, binary_search_steps: int = 5,
    loss_fn: LossFn | None = None, explainer: dict[str, Any] | None = None, weight: torch.Tensor | None = None,
) -> AttackResult:
    """Carlini & Wagner L2 attack (S&P 2017; seed 004 eq. 2, with the extra terms of eq. 6 and eq. 9).

    In tanh space ``x̂ = ½(tanh(w)+1)`` (always in [0,1]), Adam on ``w`` minimises per image

        ``‖x̂ − x‖₂² + c·f(x̂) + penalty(x̂)``,

    ``f`` = :func:`margin_loss` (``max(Z_y − max_{i≠y} Z_i, −κ)``, targeted
    ``max(max_{i≠t} Z_i − Z_t, −κ)``) and ``penalty`` the optional extra term of
    :func:`~advlens.attacks.base.forward_penalty` (e.g. ``λ·ℓ_int``, seed 004 eq. 6). ``w`` starts at
    ``x``. With ``weight`` the image is ``x̂ = x + N_w ⊙ (½(tanh(w)+1) − x)`` (seed 004 eq. 9).

    Binary search over ``c``, per image and batched (Carlini's schedule): each of the
    ``binary_search_steps`` rounds restarts from ``x`` with a fresh Adam; after a round in which an
    image reached its goal (with confidence κ) at some iterate, its upper bound becomes ``c``, else
    its lower bound does; ``c`` is then the midpoint, or ×10 while no upper bound exists. Each image
    keeps the successful iterate with the smallest L2 over all rounds; images never successful
    return ``x`` with ``success`` False. A round stops early when the batch's total objective, checked
    every ``steps // 10`` steps, has not fallen by 0.01 % since the last check.

    Differences from ``torchattacks.CW`` (which has no binary search): its ``f`` takes
    ``max((1 − onehot)·Z)`` and ``max(onehot·Z)``, so it is wrong whenever a logit involved is
    negative; its early stop fires only when the objective rises (``> prev`` instead of
    ``> 0.9999·prev``); its success test ignores κ; pixels at exactly 0 or 1 start at ``w = ±∞`` and
    never move (here ``w`` starts at ``atanh(±(1 − 1e-6))``). With all logits positive, κ = 0,
    ``binary_search_steps=1`` and no early stop in either, both give the same images. Unlike
    Carlini's code, the last round does not re-run at the upper bound when
    ``binary_search_steps ≥ 10``.

    Args:
        c: initial trade-off constant (> 0). kappa: confidence κ ≥ 0.
        steps: Adam steps per round. lr: Adam learning rate (seed 004 / AdvEdge: 0.01).
        binary_search_steps: rounds of the search over ``c`` (1 = fixed ``c``).
        loss_fn, explainer: extra objective term, see :func:`~advlens.attacks.base.forward_penalty`.
        weight: optional ``[N|1,1|3,H,W]`` per-pixel ``N_w ≥ 0``; 0 keeps a pixel unchanged.
        seed: unused (the attack is deterministic); accepted for the common interface.

    Returns:
        :class:`AttackResult`; ``extras["l2"]`` ``[N]`` ``‖x_adv − x‖₂``, ``extras["c"]`` ``[N]`` the ``c``
        of the kept result (NaN where the attack failed).

    Shape: ``x`` ``[N,3,H,W]`` in [0,1] → ``x_adv`` same shape, in [0,1].

    Example:
        >>> res = al.attack(model, x, y, method="cw", c=1.0, steps=10, binary_search_steps=2)
        >>> res.x_adv.shape, res.extras["l2"].shape   # l2: [N] distance of each x_adv to x
        (torch.Size([4, 3, 32, 32]), torch.Size([4]))
    """
    c, kappa, lr = check_number(c, "c", 0), check_number(kappa, "kappa", 0, strict=False), check_number(lr, "lr", 0)
    steps, rounds = check_int(steps, "steps", 1), check_int(binary_search_steps, "binary_search_steps", 1)
    check_objective(loss_fn, explainer)
    start = time.perf_counter()
    x = x.detach()
    weight = check_weight(weight, x)
    n = len(x)
    z = torch.clamp(2.0 * x - 1.0, -_TANH_LIMIT, _TANH_LIMIT)
    w0 = 0.5 * torch.log((1 + z) / (1 - z))  # atanh(z), written out: bit-identical to torchattacks' start
    const = torch.full((n,), c, device=x.device, dtype=x.dtype)
    lower, upper = torch.zeros_like(const), torch.full_like(const, _NO_BOUND)
    best_l2 = torch.full_like(const, math.inf)
    best_c = torch.full_like(const, math.nan)
    best_x = x.clone()
    check_every = max(steps // 10, 1)
    for _ in range(rounds):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        hit = torch.zeros(n, dtype=torch.bool, device=x.device)
        prev = math.inf
        for step in range(steps):
            with torch.enable_grad():
                xa = _image(w, x, weight)
                logits, pen = forward_penalty(model, xa, loss_fn, explainer)
                l2 = (xa - x).pow(2).flatten(1).sum(1)
                per_image = l2 + const * margin_loss(logits, y, target, kappa)
                if pen is not None:
                    per_image = per_image + pen
                cost = per_image.sum()
                (w.grad,) = torch.autograd.grad(cost, w)  # not .backward(): leaves model grads alone
            opt.step()
            with torch.no_grad():
                ok = reached(logits, y, target, kappa)
                hit |= ok
                better = ok & (l2 < best_l2)
                best_l2 = torch.where(better, l2.detach(), best_l2)
                best_c = torch.where(better, const, best_c)
                best_x = torch.where(better[:, None, None, None], xa.detach(), best_x)
            if step % check_every == 0:
                if cost.item() > prev * 0.9999:
                    break
                prev = cost.item()
        upper = torch.where(hit, torch.minimum(upper, const), upper)
        lower = torch.where(hit, lower, torch.maximum(lower, const))
        const = torch.where(upper < _NO_BOUND / 10, (lower + upper) / 2, const * 10)
    l2 = (best_x - x).flatten(1).norm(dim=1)
    params = {"method": "cw", "c": c, "kappa": kappa, "steps": steps, "lr": lr, "binary_search_steps": rounds}
    return finish(model, best_x, y, target, start, params, {"l2": l2, "c": best_c})
