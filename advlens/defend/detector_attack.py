"""Detector-aware adaptive attack: PGD that also drives a detector's score down.

Carlini & Wagner 2017 (adaptive attacks on detectors): a detector is only evaluated honestly against
an attacker who knows it and differentiates through it. :func:`differentiable_score` is a surrogate
of ``detector.score(x)`` with a gradient w.r.t. ``x`` for

- seed 002's :class:`~advlens.detect.BehaviorDeviation`: the same computation with Grad-CAM maps
  made differentiable (``create_graph=True``); the benign copies' statistics (mean and std of
  ``D_g``) and the explained class are held constant, the gradient flows through ``D_o`` and ``I_c``;
- seed 004's :class:`~advlens.detect.EnsembleDetector` with ``backbone="pixels"`` and differentiable
  interpreters: the maps are differentiable and the boosted trees soft (:func:`soft_decision`).

:func:`detector_attack` runs PGD whose objective is ``CE − weight · score``: fool the classifier and
stay below the detector's threshold.
"""
from __future__ import annotations

import torch

from .._checks import AdvlensError, check_images, check_int, check_number
from ..attacks import AttackResult, attack
from ..detect.base import Detector, auto_batch
from ..detect.behavior import BehaviorDeviation
from ..detect.ensemble import EnsembleDetector, _layers
from ..explain import explain
from ..explain.methods import list_methods, method_info
from ..explain.engine import check_model
from ..metrics import cosine

__all__ = ["DIFFERENTIABLE_INTERPRETERS", "detector_attack", "differentiable_score", "soft_decision"]

#: interpreters whose maps ``explain(..., create_graph=True)`` differentiates w.r.t. the input (the
#: registry's ``differentiable``; MASK is an optimisation and LRP's backward is not differentiable)
DIFFERENTIABLE_INTERPRETERS = tuple(m for m in list_methods() if method_info(m).differentiable)


def _tree_paths(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each node's parent ``[T,M]`` (−1 for roots and padding), whether it is a left child ``[T,M]``
    and the deepest path length (edges)."""
    left, right = state["left"], state["right"]
    n_trees, n_nodes = left.shape
    parent = torch.full_like(left, -1)
    is_left = torch.zeros_like(left, dtype=torch.bool)
    rows = torch.arange(n_trees, device=left.device)[:, None].expand_as(left)
    nodes = torch.arange(n_nodes, device=left.device).expand_as(left)
    inner = left >= 0
    parent[rows[inner], left[inner]] = nodes[inner]
    parent[rows[inner], right[inner]] = nodes[inner]
    is_left[rows[inner], left[inner]] = True
    depth = torch.zeros_like(left)
    for _ in range(n_nodes):  # depth of a child = depth of its parent + 1; converges in (max depth) rounds
        nxt = torch.where(parent >= 0, depth.gather(1, parent.clamp_min(0)) + 1, torch.zeros_like(depth))
        if torch.equal(nxt, depth):
            break
        depth = nxt
    return parent, is_left, int(depth.max())


def soft_decision(state: dict[str, torch.Tensor], features: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft version of :func:`advlens.detect.boosting.decision`: raw boosting score ``[N]`` float64 of
    ``features`` ``[N,F]``, differentiable in ``features``.

    Each split ``x_f <= t`` becomes the probability ``sigmoid((t − x_f) / temperature)`` of going
    left; a leaf is reached with the product of the decisions along its path, and each tree gives the
    expected leaf value. ``temperature → 0`` gives the hard trees (ties ``x_f == t`` aside).
    """
    temperature = check_number(temperature, "temperature", 0)
    parent, is_left, depth = _tree_paths(state)
    n_trees, n_nodes = parent.shape
    x = features.float().double()  # as decision(): float32 features against float64 thresholds
    xf = x.index_select(1, state["feature"].flatten()).view(len(x), n_trees, n_nodes)
    go_left = torch.sigmoid((state["threshold"] - xf) / temperature)  # [N,T,M] at every inner node
    idx = parent.clamp_min(0).expand(len(x), n_trees, n_nodes)
    from_parent = go_left.gather(2, idx)
    edge = torch.where(is_left, from_parent, 1 - from_parent)  # probability of the edge parent → node
    has_parent = parent >= 0
    reach = torch.ones_like(xf)
    for _ in range(depth):  # after `depth` rounds every node holds the product along its whole path
        reach = torch.where(has_parent, edge * reach.gather(2, idx), torch.ones_like(reach))
    leaf = (state["left"] < 0).to(reach.dtype)  # padding is a "leaf" of value 0
    return state["init"] + state["rate"] * (reach * leaf * state["value"]).sum((1, 2))


def _check_supported(detector: Detector) -> None:
    if isinstance(detector, BehaviorDeviation):
        pass
    elif isinstance(detector, EnsembleDetector):
        if detector.backbone != "pixels":
            raise AdvlensError(f"ensemble detector: backbone {detector.backbone!r} is not supported by the "
                               "detector-aware attack (only 'pixels')")
        bad = [m for m in detector.interpreters if m not in DIFFERENTIABLE_INTERPRETERS]
        if bad:
            raise AdvlensError(f"ensemble detector: interpreter(s) {bad} give no differentiable map (supported: "
                               f"{', '.join(DIFFERENTIABLE_INTERPRETERS)})")
    else:
        raise AdvlensError(f"{detector.kind} detector: no differentiable score (supported: behavior, "
                           "ensemble with backbone 'pixels')")
    detector._check_fitted()


def _behavior_score(det: BehaviorDeviation, x: torch.Tensor) -> torch.Tensor:
    """The detector's step-5 score ``[N]`` (:meth:`BehaviorDeviation.compare`: ``median(D_g) − D_o`` by the
    paper's rule, or the calibrated z-score) with ``D_g`` and the class held constant."""
    n, k, bs = len(x), det.copies, auto_batch(x, det.batch_size)
    xc = det.clean(x)
    with torch.no_grad():  # benign copies: same draw as BehaviorDeviation._score, constants here
        xcd = xc.detach()
        copies = det.benign_copies(x.detach(), xcd)
        target = det.model(xcd).argmax(1)
        h_cd = det._maps(xcd, target)
        h_g = det._maps(copies, target.repeat(k)).view(k, n, *h_cd.shape[1:])
        d_g = cosine(h_cd.expand(k, *h_cd.shape).flatten(0, 1), h_g.flatten(0, 1)).view(k, n)
    kw = {"layers": [det.layer], "target": target, "create_graph": True, "batch_size": bs}
    h_c = explain(det.model, xc, "gradcam", **kw)[det.layer]
    h_o = explain(det.model, x, "gradcam", **kw)[det.layer]
    d_o = cosine(h_c, h_o)
    return det.compare(d_o, d_g)


def _ensemble_score(det: EnsembleDetector, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """``sigmoid(soft boosting score)`` ``[N]`` of differentiable maps of the predicted (detached) class."""
    target = det.model.predict(x, det.batch_size)
    maps = {}
    for m in det.interpreters:
        (v,) = explain(det.model, x, m, layers=_layers(det.model, m), target=target, create_graph=True,
                       batch_size=det.batch_size, seed=det.seed, **det.options.get(m, {})).values()
        maps[m] = v
    return torch.sigmoid(soft_decision(det.state, det.features(maps), temperature)).float()


def differentiable_score(detector: Detector, x: torch.Tensor, temperature: float = 0.02) -> torch.Tensor:
    """Differentiable surrogate ``[N]`` of ``detector.score(x)`` (higher = more adversarial) for images
    ``x`` ``[N,3,H,W]`` in [0,1] (set ``x.requires_grad_()`` to differentiate it).

    ``temperature`` softens the ensemble's boosted trees (feature units; 1e-9, below the pooled maps'
    float32 resolution, reproduces the hard score); the behaviour detector's value equals its score. Other detectors (NoiseCAM's DBSCAN count),
    the efficientnet backbone and MASK / RTS interpreters raise :class:`AdvlensError`.
    """
    _check_supported(detector)
    check_images(x)
    detector._check_size(x)
    x = x.to(detector.model.device)
    with torch.enable_grad():
        if isinstance(detector, BehaviorDeviation):
            return _behavior_score(detector, x)
        return _ensemble_score(detector, x, temperature)


def detector_attack(model, detector: Detector, x: torch.Tensor, y: torch.Tensor | None, *, weight: float = 1.0,
                    eps: float = 0.031, alpha: float | None = None, steps: int = 20, seed: int = 0,
                    temperature: float = 0.02, gate: bool = True) -> AttackResult:
    """Adaptive PGD against ``model`` and ``detector`` (Carlini & Wagner 2017, adaptive attacks on detectors).

    Ascends ``CE(model(x'), y) − weight · g · differentiable_score(detector, x')`` by L∞ PGD (random
    start, ``steps`` sign steps of ``alpha``, default ``2.5 · eps / steps``): the classifier is fooled
    while the detector's score (seed 002's behaviour deviation, seed 004's interpretation ensemble) is
    kept low. With ``gate`` (default) ``g`` is 1 for images the model already misclassifies and 0 for
    the others (first fool, then hide, as C&W's hinge does); ``gate=False`` penalises every image,
    which on digits mostly stops the attack from fooling at all (64 test digits, weight 1: the
    ensemble's fooling rate drops to 17 %, the behaviour detector's to 0 %; gated: 100 % and 77 %).

    Shape: ``x`` ``[N,3,H,W]`` in [0,1], ``y`` ``[N]`` (None: clean predictions) → ``x_adv`` same shape,
    ``‖x_adv − x‖∞ ≤ eps``. ``params`` records ``method="pgd+detector"``, ``detector`` and ``weight``.
    """
    _check_supported(detector)
    weight = check_number(weight, "weight", 0.0, strict=False)
    eps = check_number(eps, "eps", 0, 1)
    steps = check_int(steps, "steps", 1)
    alpha = 2.5 * eps / steps if alpha is None else alpha
    y_ref = check_model(model).predict(x) if y is None else torch.as_tensor(y, device=x.device)

    def loss_fn(xa: torch.Tensor, logits: torch.Tensor, maps: object) -> torch.Tensor:
        g = (logits.detach().argmax(1) != y_ref).to(xa.dtype) if gate else torch.ones(len(xa), device=xa.device)
        if not bool(g.any()):
            return torch.zeros(len(xa), device=xa.device)
        return weight * g * differentiable_score(detector, xa, temperature)

    res = attack(model, x, y, method="pgd", seed=seed, eps=eps, alpha=alpha, steps=steps,
                 loss_fn=loss_fn if weight > 0 else None)
    res.params.update(method="pgd+detector", detector=detector.kind, weight=weight, temperature=temperature,
                      gate=bool(gate))
    return res
