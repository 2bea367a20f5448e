r"""DLFuzz: coverage-guided gradient ascent (Guo et al. 2021; the attack of seed 000, §III-D eq. 8).

REFERENCE.md "DLFuzz" (facts from ``turned2670/DLFuzz``): for an image with label ``y`` it *ascends*

.. math::

    L(x) = w \sum_{i \in \text{top-}k} s_i(x) - s_y(x) + \lambda \sum_{n \in \mathcal N} \sigma_n\,
           \operatorname{mean}_{h,w} a_n(x)

with ``s`` the softmax probabilities (``scores="probs"``, DLFuzz on ImageNet) or the logits
(``"logits"``, DLFuzz on MNIST), ``top-k`` the ``top_k = 4`` best classes other than ``y`` (ranks
2–5 of the prediction), ``w = 0.5``, ``λ = 0.5``, ``a_n`` the raw output of neuron (channel) ``n``
and ``σ_n = ±1`` (−1 only for strategy 3's neurons just below the threshold). Each step is
``x ← clip(x + step·ĝ, 0, 1)`` with the RMS-normalized gradient ``ĝ = g / (sqrt(mean g²) + 1e-5)``.

Neuron selection strategies (REFERENCE.md; ``times`` = how often each neuron was covered, from a
:class:`~advlens.metrics.coverage.CoverageTracker`):

* ``None`` — random uncovered neurons; ``0`` — sampled ∝ ``times``; ``1`` — ∝ ``max(times) − times``
  (seed 000's choice); ``2`` — uniform among the top 10 % of all neurons by the mean weight of the
  producing conv/linear (positive means only); ``3`` — neurons with value in ``(t, t+0.25)``
  (maximized, half the budget) and in ``(t−0.2, t)`` (entered negated), dense layers excluded.

Randomness: each image samples its neurons from its own generator (seeded by ``seed`` and the image's
content, :mod:`advlens._rng`). The sampling *weights* of strategies ``None``, 0, 1 and 3 come from
``times`` — the coverage counted over the whole batch (DLFuzz is coverage-guided, so this is
inherently per batch) — and with them an image's selection and result depend on the other images.
Strategy 2 weighs neurons by the model's kernels only, so its results are per image.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import AdvlensError, check_choice, check_images, check_int, check_number
from .._rng import image_generators
from ..explain.engine import check_model
from ..metrics.coverage import (CoverageTracker, NeuronLayer, hook_runs, channel_means, coverage_layers,
                                layer_outputs_pass, scaled_channel_means)
from ..models.wrapper import ClassifierModel
from .base import AttackResult, finish, register_attack

__all__ = ["dlfuzz", "dlfuzz_objective", "select_neurons"]

log = logging.getLogger(__name__)

STRATEGIES = (None, 0, 1, 2, 3)
SCORES = ("probs", "logits")
_STRATEGY = "strategy (DLFuzz neuron selection)"


def _check_top_k(top_k: object, classes: int) -> int:
    if check_int(top_k, "top_k", 1) > classes - 1:
        raise AdvlensError(f"top_k={top_k} needs more than {top_k} classes, the model has {classes}")
    return top_k  # type: ignore[return-value]


def _values_dense(outputs: dict[str, torch.Tensor], names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Neuron values ``[N,T]`` of layer outputs and a ``bool [T]`` mask of neurons in dense layers."""
    values = torch.cat([scaled_channel_means(outputs[k]) for k in names], 1)
    dense = torch.cat([torch.full((outputs[k].shape[1],), outputs[k].ndim == 2) for k in names])
    return values, dense.to(values.device)


def _other_classes(s: torch.Tensor, y: torch.Tensor, top_k: int) -> torch.Tensor:
    """The ``top_k`` highest-scoring classes other than ``y``: ``[N,C]`` → ``[N,top_k]``."""
    return s.detach().scatter(1, y[:, None], float("-inf")).topk(top_k, 1).indices


def _objective(
    model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, sign: torch.Tensor,
    others: torch.Tensor | None, predict_weight: float, lam: float, top_k: int, scores: str,
    layers: list[NeuronLayer],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One forward: ``(L [N], logits [N,C], {layer: output})`` (see the module docstring)."""
    logits, outputs = layer_outputs_pass(model, x, layers)
    s = logits.softmax(1) if scores == "probs" else logits
    if others is None:
        others = _other_classes(s, y, top_k)
    pred_term = predict_weight * s.gather(1, others).sum(1) - s.gather(1, y[:, None]).squeeze(1)
    acts = torch.cat([channel_means(out) for out in outputs.values()], 1)  # [N,T] raw spatial means
    return pred_term + lam * (acts.gather(1, index) * sign).sum(1), logits, outputs


def dlfuzz_objective(
    model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, neurons: torch.Tensor,
    signs: torch.Tensor | None = None, others: torch.Tensor | None = None, predict_weight: float = 0.5,
    lam: float = 0.5, top_k: int = 4, scores: str = "probs",
    layers: str | Sequence[str] | Sequence[NeuronLayer] = "dlfuzz",
) -> torch.Tensor:
    r"""The DLFuzz objective ``L`` per image (module docstring; REFERENCE.md DLFuzz, seed 000 eq. 8).

    Differentiable with respect to ``x`` (set ``x.requires_grad``).

    Args:
        neurons: ``long [N,M]`` or ``[M]`` selected neurons as flat indices over the channels of
            ``layers`` concatenated in order (layer 1's ``K_1`` channels, then layer 2's, …).
        layers: ``"dlfuzz"`` (DLFuzz's layers, default), ``"explained"`` or names
            (:func:`~advlens.metrics.coverage.coverage_layers`).
        signs: ``[N,M]`` or ``[M]`` of ±1 (0 switches a slot off); default all +1.
        others: ``long [N,top_k]`` the competing classes; default: the ``top_k`` best classes of
            ``x`` other than ``y`` (DLFuzz fixes them from the seed's prediction).
        predict_weight, lam: ``w`` and ``λ``. scores: ``"probs"`` or ``"logits"``.

    Returns:
        ``[N]`` objective values.

    Shape: ``x`` ``[N,3,H,W]`` in [0,1], ``y`` ``[N]`` → ``[N]``.
    """
    model = check_model(model)
    found = coverage_layers(model, layers)
    scores, top_k = check_choice(scores, "scores", SCORES), _check_top_k(top_k, len(model.labels))
    index = torch.as_tensor(neurons, device=x.device).long().expand(len(x), -1)
    sign = torch.ones_like(index, dtype=x.dtype) if signs is None else torch.as_tensor(signs).to(x).expand_as(index)
    y = torch.as_tensor(y, device=x.device).long()
    return _objective(model, x, y, index, sign, others, predict_weight, lam, top_k, scores, found)[0]


def _uniform(shape: tuple[int, int], gen: torch.Generator | Sequence[torch.Generator],
             device: torch.device) -> torch.Tensor:
    """``float64 [N,T]`` uniforms from one generator, or row ``i`` from ``gen[i]`` (one per image)."""
    if isinstance(gen, torch.Generator):
        return torch.rand(shape, generator=gen, device=device, dtype=torch.float64)
    return torch.stack([torch.rand(shape[1], generator=g, device=device, dtype=torch.float64) for g in gen])


def _pick(weight: torch.Tensor, count: torch.Tensor, gen: torch.Generator | Sequence[torch.Generator],
          allowed: torch.Tensor | None = None):
    """Per row, ``count`` distinct columns sampled without replacement ∝ ``weight`` (Gumbel top-k);
    zero-weight columns only once the positive ones run out (then uniformly); never a column with
    ``allowed`` False. ``weight [N,T] ≥ 0``, ``count [N]`` → bool mask ``[N,T]``; ``gen``: one
    generator, or one per row."""
    u = _uniform(tuple(weight.shape), gen, weight.device).clamp(1e-12, 1 - 1e-12)
    g = -torch.log(-torch.log(u))
    w = weight.double()
    key = torch.where(w > 0, w.clamp_min(1e-300).log() + g, g - 1e4)
    if allowed is not None:
        key = key.masked_fill(~allowed, float("-inf"))
    rank = key.argsort(1, descending=True).argsort(1)
    return rank < count[:, None]


def _producer_weight_means(model: ClassifierModel, layers: list[NeuronLayer], sizes: list[int], x1: torch.Tensor):
    """Mean kernel weight per neuron, ``float64 [T]``, of the conv/linear producing each layer (NaN: unknown).

    The producer is the last ``Conv{1,2,3}d`` / ``Linear`` run (one traced forward) before the layer
    outputs, and only if its output count equals the layer's ``K`` (in residual blocks that can be the
    shortcut conv; for a pooling layer, the conv before it).
    """
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    order: list[nn.Module] = []
    snap: dict[str, int] = {}
    ends = {(id(l.module), l.call): l.name for l in layers}

    def ran(mod: nn.Module, k: int, inp: tuple, out: object) -> None:
        if isinstance(mod, kinds):
            order.append(mod)
        if (id(mod), k) in ends:
            snap.setdefault(ends[(id(mod), k)], len(order))

    convs = [m for m in model.net.modules() if isinstance(m, kinds)]
    with torch.no_grad(), hook_runs(model, convs + [l.module for l in layers], ran):
        model(x1)
    means = []
    for n, k in zip([l.name for l in layers], sizes):
        prod = order[snap[n] - 1] if snap.get(n, 0) > 0 else None
        ok = prod is not None and prod.weight.shape[0] == k
        means.append(prod.weight.detach().flatten(1).mean(1).double() if ok
                     else torch.full((k,), float("nan"), dtype=torch.float64, device=x1.device))
    return torch.cat(means).to(x1.device)


def _select(
    tracker: CoverageTracker, strategy: int | None, m: int, gen: torch.Generator | Sequence[torch.Generator],
    values: torch.Tensor, dense: torch.Tensor, x1: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image selection from tracker state and current neuron ``values [N,T]``; see :func:`select_neurons`."""
    n, t = values.shape
    times = tracker.times_flat.to(values.device).double().expand(n, t)
    count = torch.full((n,), m, dtype=torch.long, device=values.device)
    sign = torch.ones(n, m, dtype=values.dtype, device=values.device)
    if strategy == 2:
        means = _producer_weight_means(tracker.model, tracker.layers, tracker.sizes, x1)
        valid = torch.isfinite(means) & (means > 0)
        if not valid.any():
            log.warning("dlfuzz strategy 2: no producing conv/linear with positive mean weight; using strategy 1")
            strategy = 1
        else:
            k = min(math.ceil(0.1 * t), int(valid.sum()))
            top = torch.zeros(t, dtype=torch.bool, device=values.device)
            top[means.masked_fill(~valid, float("-inf")).topk(k).indices] = True
            mask = _pick(top.double().expand(n, t), count, gen)
    if strategy is None:
        mask = _pick((times == 0).double(), count, gen)
    elif strategy == 0:
        mask = _pick(times, count, gen)
    elif strategy == 1:
        mask = _pick(times.max() - times, count, gen)
    elif strategy == 3:
        thr = tracker.threshold
        above = (values > thr) & (values < thr + 0.25) & ~dense
        below = (values > thr - 0.2) & (values < thr) & ~dense
        n_a, n_b = above.sum(1), below.sum(1)
        q_a = torch.minimum(n_a, torch.clamp(m - n_b, min=m // 2))
        q_b = torch.minimum(n_b, m - q_a)
        sel_a = _pick(above.double(), q_a, gen, above)
        sel_b = _pick(below.double(), q_b, gen, below)
        fill = _pick((times == 0).double(), m - q_a - q_b, gen, ~(sel_a | sel_b))
        mask = sel_a | sel_b | fill
    index = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :m]
    if strategy == 3:
        sign = torch.where(sel_b.gather(1, index), -sign, sign)
    return index, sign


def select_neurons(
    tracker: CoverageTracker, x: torch.Tensor, strategy: int | None = 1, neurons: int = 10,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DLFuzz neuron selection, one independent draw per image (REFERENCE.md DLFuzz, seed 000: strategy 1).

    Every strategy returns exactly ``neurons`` distinct neurons per image: when a strategy has fewer
    candidates (e.g. few neurons near the threshold), the rest are random uncovered neurons, then
    random covered ones (DLFuzz's own fallback is random neurons). Strategies 0/1 with nothing covered
    yet are uniform, i.e. random uncovered neurons as in DLFuzz. Strategy 3 samples its near-threshold
    neurons at random (DLFuzz takes the first ones in its table order).

    Args:
        tracker: coverage so far (updated at least once); defines the layers and ``times``.
        x: ``[N,3,H,W]`` the current inputs (their values drive strategy 3; ``x[:1]`` traces
            strategy 2's producing convs).
        strategy: ``None``, 0, 1, 2 or 3 (module docstring). neurons: budget ``M`` per image.
        generator: randomness: one generator for the batch, or one per image (row ``i`` draws from
            ``generator[i]`` only); default one per image, seeded with 0 and the image's content
            (:mod:`advlens._rng`).

    Returns:
        ``(index, sign)``: ``long [N,M]`` flat neuron indices (layers concatenated in tracker order)
        and ``[N,M]`` ±1 (−1 for strategy 3's neurons below the threshold).
    """
    strategy = check_choice(strategy, _STRATEGY, STRATEGIES)
    m = check_int(neurons, "neurons", 1)
    check_images(x)
    if not tracker.total:
        raise AdvlensError("the tracker has seen no input yet; call tracker.update(x) first")
    if m > tracker.total:
        raise AdvlensError(f"neurons={m} exceeds the {tracker.total} neurons of the tracked layers")
    with torch.no_grad():
        values, dense = _values_dense(layer_outputs_pass(tracker.model, x, tracker.layers)[1], tracker.names)
    gen = image_generators(x, 0) if generator is None else generator
    if not isinstance(gen, torch.Generator) and len(gen) != len(x):
        raise AdvlensError(f"generator must be one torch.Generator or one per image ({len(x)}), got {len(gen)}")
    return _select(tracker, strategy, m, gen, values, dense, x[:1])


@register_attack("dlfuzz", norm="unbounded")
def dlfuzz(
    model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0,
    strategy: int | None = 1, neurons: int = 10, threshold: float = 0.25, lam: float = 0.5,
    predict_weight: float = 0.5, top_k: int = 4, scores: str = "probs", step: float = 0.5 / 255,
    iterations: int = 3, max_rel_l2: float | None = 0.02, layers: str | Sequence[str] = "dlfuzz",
    tracker: CoverageTracker | None = None,
) -> AttackResult:
    """DLFuzz gradient ascent on the objective of the module docstring (seed 000 §III-D; REFERENCE.md).

    Batched: per image, the competing classes are fixed from the clean prediction and the neurons
    are selected once (independently per image, seeded), as DLFuzz fixes both for a seed's
    iterations. The selection weights of strategies other than 2 come from the batch's coverage
    (module docstring): those results depend on the batch by design. Each iteration takes one
    RMS-normalized step, clipped to [0,1] (no other projection).
    An image stops at its first adversarial iterate (label ≠ ``y``; kept as ``x_adv``), or once
    ``‖x−x₀‖₂/‖x₀‖₂ ≥ max_rel_l2`` (that iterate is kept, so the bound can be exceeded by one step;
    DLFuzz drops such mutations from its seed queue; measured in [0,1] units, whereas DLFuzz measures
    on mean-subtracted 0–255 values). Otherwise ``x_adv`` is the last iterate. Images misclassified
    before the attack are returned unchanged.

    Args:
        y: labels ``[N]`` (``y_orig``). target: unsupported (DLFuzz is untargeted).
        seed: neuron-selection randomness, drawn per image from the image's content
            (:mod:`advlens._rng`); with ``strategy=2`` results do not depend on the batch.
        strategy: ``None``/0/1/2/3 (default 1, as seed 000).
        neurons: neurons per image (10). threshold: coverage threshold (0.25).
        lam, predict_weight, top_k, scores: ``λ``, ``w``, competing classes, ``"probs"|"logits"``.
        step: step in [0,1] units (0.5/255 ≈ DLFuzz's 0.5 in 0–255 units). iterations: 3 (seed 000: 1).
        max_rel_l2: stopping bound (None: off).
        layers: the layers whose channels are neurons: ``"dlfuzz"`` (default: every conv, pooling and
            dense layer, as DLFuzz), ``"explained"`` (the explainable layers only) or names
            (:func:`~advlens.metrics.coverage.coverage_layers`). Ignored when ``tracker`` is given.
        tracker: a :class:`~advlens.metrics.coverage.CoverageTracker` to continue (updated in
            place; pass ``tracker.copy()`` to keep yours); default a fresh one over this batch.

    Returns:
        :class:`AttackResult` with ``extras``: ``perturbation`` ``[N,3,H,W]`` = ``x_adv − x`` (seed 000
        scales it by 0.25…4), ``coverage_before`` / ``coverage_after`` (0-dim), ``coverage_curve``
        ``[iterations+1]`` (coverage after each iteration, seed 000 Fig. 2), ``iterations_used`` ``[N]``.

    Shape: ``x`` ``[N,3,H,W]`` in [0,1] → ``x_adv`` same shape.

    Example:
        >>> res = al.attack(model, x, y, method="dlfuzz", strategy=1, iterations=3)
        >>> res.x_adv.shape, res.extras["coverage_curve"].shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4]))
    """
    if target is not None:
        raise AdvlensError("dlfuzz is untargeted; drop target")
    strategy, scores = check_choice(strategy, _STRATEGY, STRATEGIES), check_choice(scores, "scores", SCORES)
    top_k = _check_top_k(top_k, len(model.labels))
    m, iterations = check_int(neurons, "neurons", 1), check_int(iterations, "iterations", 1)
    step, threshold = check_number(step, "step", 0), check_number(threshold, "threshold")
    lam, predict_weight = check_number(lam, "lam"), check_number(predict_weight, "predict_weight")
    if max_rel_l2 is not None:
        max_rel_l2 = check_number(max_rel_l2, "max_rel_l2", 0)
    given = tracker is not None
    if tracker is None:
        tracker = CoverageTracker(model, threshold, layers)
    elif not isinstance(tracker, CoverageTracker) or tracker.model is not model:
        raise AdvlensError("tracker must be a CoverageTracker built on the attacked model")
    names, found = tracker.names, tracker.layers
    start = time.perf_counter()
    x0 = x.detach()

    with torch.no_grad():
        logits, outputs = layer_outputs_pass(model, x0, found)
    values, dense = _values_dense(outputs, names)
    if m > len(dense):
        raise AdvlensError(f"neurons={m} exceeds the {len(dense)} neurons of the tracked layers")
    tracker.update_values(values, [outputs[k].shape[1] for k in names])
    s0 = logits.softmax(1) if scores == "probs" else logits
    others = _other_classes(s0, y, top_k)
    active = logits.argmax(1) == y  # already-misclassified images stay as they are
    del outputs, logits, s0
    index, sign = _select(tracker, strategy, m, image_generators(x0, seed), values, dense, x0[:1])
    sign = sign.to(x0.dtype)

    curve = [tracker.coverage]
    cur = x0.clone()
    used = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
    norm0 = x0.flatten(1).norm(dim=1).clamp_min(1e-12)

    def assess(idx: torch.Tensor, logits: torch.Tensor, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Count the coverage of the iterates ``cur[idx]``; ``[len(idx)]`` True where they stop."""
        tracker.update_values(torch.cat([scaled_channel_means(outputs[k]) for k in names], 1))
        stop = logits.detach().argmax(1) != y[idx]
        if max_rel_l2 is not None:
            stop |= (cur[idx] - x0[idx]).flatten(1).norm(dim=1) / norm0[idx] >= max_rel_l2
        active[idx[stop]] = False
        curve.append(tracker.coverage)
        return stop

    # The forward at iteration t both assesses iterate t (label, bound, coverage) and gives the
    # gradient for step t+1; one more forward assesses the last iterate.
    for t in range(iterations):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            if t > 0:
                curve.append(tracker.coverage)
            continue
        with torch.enable_grad():
            xa = cur[idx].requires_grad_(True)
            obj, logits, outputs = _objective(model, xa, y[idx], index[idx], sign[idx], others[idx],
                                              predict_weight, lam, top_k, scores, found)
            go = ~assess(idx, logits, outputs) if t > 0 else torch.ones_like(idx, dtype=torch.bool)
            if go.any():
                (g,) = torch.autograd.grad(obj[go].sum(), xa)
        del outputs, logits
        if go.any():
            g, step_idx = g[go], idx[go]
            rms = g.flatten(1).pow(2).mean(1).sqrt().view(-1, 1, 1, 1)
            cur[step_idx] = torch.clamp(cur[step_idx] + step * g / (rms + 1e-5), 0.0, 1.0)
            used[step_idx] += 1
    idx = active.nonzero().squeeze(1)
    if idx.numel():
        with torch.no_grad():
            assess(idx, *layer_outputs_pass(model, cur[idx], found))
    else:
        curve.append(tracker.coverage)

    x_adv = cur.detach()
    params = {
        "method": "dlfuzz", "strategy": strategy, "neurons": m, "threshold": tracker.threshold, "lam": lam,
        "predict_weight": predict_weight, "top_k": top_k, "scores": scores, "step": step,
        "iterations": iterations, "max_rel_l2": max_rel_l2, "layers": list(names), "seed": seed,
        "selection": "per image", "tracker": "given" if given else "fresh",
    }
    extras = {
        "perturbation": x_adv - x0,
        "coverage_before": torch.tensor(curve[0], device=x0.device),
        "coverage_after": torch.tensor(tracker.coverage, device=x0.device),
        "coverage_curve": torch.tensor(curve, device=x0.device),
        "iterations_used": used,
    }
    return finish(model, x_adv, y, None, start, params, extras)
