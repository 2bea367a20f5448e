"""Projected gradient descent under an L∞ budget (Madry et al.)."""
from __future__ import annotations

import time

import torch

from .._checks import check_bool, check_int, check_number
from .._rng import rand_per_image
from .base import (
    AttackResult,
    check_objective,
    check_weight,
    finish,
    objective_grad,
    project_linf,
    register_attack,
)

__all__ = ["pgd", "EVAL_PGD"]

#: the L∞ PGD of the detection and defense evaluations (seed 004's ε = 0.031; 20 steps of ε/8 instead of the
#: paper's 300 of 1/255, cheap): the ``seed002`` and ``defenses`` presets, the ensemble detector's training
#: examples and the defaults of ``advlens detect eval`` / ``advlens defend eval`` read it
EVAL_PGD: dict[str, float] = {"eps": 0.031, "alpha": 0.031 / 8, "steps": 20}


@register_attack("pgd")
def pgd(
    model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0,
    eps: float = 8 / 255, alpha: float | None = None, steps: int = 10, random_start: bool = True,
    loss_fn=None, explainer=None, weight: torch.Tensor | None = None,
) -> AttackResult:
    """L∞ PGD: ``x ← Π_{B(x0,eps) ∩ [0,1]}(x + alpha · w ⊙ sign(∇x J))`` for ``steps`` iterations.

    Untargeted ascends ``CE(y)``, targeted descends ``CE(target)``; an extra ``loss_fn`` term
    is subtracted (attacks on the explainer, seed 004). With ``random_start`` the start is
    uniform in the eps-ball (seeded). Same update and projection as torchattacks' ``PGD``.

    Args:
        seed: the random start, drawn per image from the image's content (:mod:`advlens._rng`), so
            results do not depend on the batch (its size, the other images, the order, ``chunk_size``).
        eps: L∞ radius in (0, 1] ([0,1] pixel units). alpha: step size in (0, 1]; None = ``eps / 4``
            (torchattacks' 2/255 at its default 8/255). steps: iterations (≥ 1).
        random_start: start uniformly in the eps-ball (a bool). loss_fn, explainer: extra objective term,
            see :func:`~advlens.attacks.base.forward_penalty` (Python only).
        weight: optional ``[N,1|3,H,W]`` per-pixel weight ``N_w`` of the step (AdvEdge,
            seed 004 eq. 8); default 1.

    Shape: ``x`` ``[N,3,H,W]`` in [0,1] → ``x_adv`` same shape, ``‖x_adv − x‖∞ ≤ eps``.
    """
    eps = check_number(eps, "eps", 0, 1)
    alpha = eps / 4 if alpha is None else check_number(alpha, "alpha", 0, 1)
    steps, random_start = check_int(steps, "steps", 1), check_bool(random_start, "random_start")
    check_objective(loss_fn, explainer)
    weight = check_weight(weight, x)
    start = time.perf_counter()
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        noise = rand_per_image(x, seed) * 2 - 1
        x_adv = torch.clamp(x + eps * noise, 0.0, 1.0)
    for _ in range(steps):
        grad, _ = objective_grad(model, x_adv, y, target, loss_fn, explainer)
        step = grad.sign() if weight is None else weight * grad.sign()
        x_adv = project_linf(x_adv + alpha * step, x, eps)
    params = {"method": "pgd", "eps": eps, "alpha": alpha, "steps": steps, "random_start": random_start}
    return finish(model, x_adv, y, target, start, params)
