"""Shared attack machinery: the result record, the objective, projection and the registry.

Every attack is ``fn(model, x, y, *, seed, **params) -> AttackResult`` with images ``[N,3,H,W]``
in [0,1]. The objective an attack *ascends* is

    untargeted:  CE(logits, y)        − penalty
    targeted:   −CE(logits, target)   − penalty

where ``penalty = loss_fn(x_adv, logits, maps)`` is an optional extra term (per-image ``[N]`` or
a scalar) that attacks on the explainer use (DESIGN §5); ``maps`` are computed differentiably
from the same forward when ``explainer`` is given.
"""
from __future__ import annotations

import difflib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from .._checks import (
    AdvlensError, check_callable, check_images, check_int, check_labels, check_layers, check_number, unknown_name,
)
from ..explain.api import layers_for, maps_from_pass, pass_context
from ..explain.methods import method_info
from ..explain.engine import check_model, forward_backward
from ..explain.batching import resolve_batch_size, run_batched
from ..models.wrapper import ClassifierModel

__all__ = [
    "AttackInfo", "AttackResult", "attack", "attack_info", "list_attacks", "register_attack", "forward_penalty", "objective_grad", "project_linf", "finish",
    "check_objective", "check_weight",
]

#: prefix of batch-level extras (one value per attacked batch, not per image)
BATCH_EXTRA = "coverage_"

LossFn = Callable[[torch.Tensor, torch.Tensor, "dict[str, dict[str, torch.Tensor]] | None"], torch.Tensor]


@dataclass
class AttackResult:
    """Outcome of an attack on a batch.

    Attributes:
        x_adv: ``[N,3,H,W]`` adversarial images in [0,1].
        success: ``[N]`` bool — prediction differs from ``y`` (untargeted) or equals ``target``.
        pred: ``[N]`` predicted class of ``x_adv``.
        confidence: ``[N]`` softmax probability of ``pred``.
        time_s: wall-clock seconds for the whole batch.
        y: ``[N]`` the labels attacked (given, or the clean predictions).
        params: the attack's parameters (for results tables).
        extras: per-attack outputs, e.g. ``eps`` ``[N]`` (minimal flipping eps) for ``ifgsm``; per
            image ``[N,...]`` except names starting with ``coverage_`` (DLFuzz's neuron coverage of
            the whole batch).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    pred: torch.Tensor
    confidence: torch.Tensor
    time_s: float
    y: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())


@dataclass(frozen=True)
class AttackInfo:
    """One registered attack.

    Attributes:
        name: the ``method`` name :func:`attack` accepts.
        fn: ``fn(model, x, y, target=None, seed=0, **params) -> AttackResult``.
        norm: what bounds its perturbation: ``"linf"``, ``"l2"``, ``"l0"`` (pixels changed), ``"flow"``
            (spatial transformation) or ``"unbounded"`` (DLFuzz: a step size and a relative-L2 cap).
        black_box: needs only the model's outputs, no gradients (one-pixel's differential evolution).
    """

    name: str
    fn: Callable[..., AttackResult]
    norm: str = "linf"
    black_box: bool = False

    def defaults(self) -> dict[str, Any]:
        """The attack's parameters and their defaults (the defaults live in the attack itself)."""
        skip = {"model", "x", "y", "target", "seed"}
        return {p.name: p.default for p in inspect.signature(self.fn).parameters.values()
                if p.name not in skip and p.default is not inspect.Parameter.empty}


_REGISTRY: dict[str, Callable[..., AttackResult]] = {}
_INFO: dict[str, AttackInfo] = {}


def register_attack(name: str, norm: str = "linf", black_box: bool = False):
    """Decorator registering an attack function under ``name`` with its record (:class:`AttackInfo`);
    registering a name twice is refused."""

    def deco(fn):
        if name in _REGISTRY:
            raise RuntimeError(f"attack {name!r} registered twice")
        _REGISTRY[name] = fn
        _INFO[name] = AttackInfo(name, fn, norm, black_box)
        return fn

    return deco


def list_attacks() -> list[str]:
    """Names accepted by :func:`attack`."""
    return list(_REGISTRY)


def attack_info(name: object) -> AttackInfo:
    """The record of attack ``name`` (one line with close matches when unknown)."""
    if not isinstance(name, str) or name not in _INFO:
        raise unknown_name("attack", name, list_attacks())
    return _INFO[name]


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``x_adv`` ``[N,C,H,W]`` onto the L∞ ball of radius ``eps`` around ``x`` ``[N,C,H,W]`` and onto [0,1]."""
    return torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0.0, 1.0)


def forward_penalty(
    model: ClassifierModel,
    xa: torch.Tensor,
    loss_fn: LossFn | None = None,
    explainer: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One differentiable forward of ``xa``: the logits ``[N,C]`` and the extra term ``[N]``.

    This is the piece every attack shares (PGD, C&W, StAdv): ``xa`` may be any differentiable
    function of the attack's variables; the penalty is ``loss_fn(xa, logits, maps)`` reduced to
    one value per image (None without ``loss_fn``).

    Args:
        explainer: ``{"method": str, "layers": str | list, "target": None | int | Tensor}``
            (``"tau"`` too for ``grad``); when given, ``loss_fn`` receives ``{method: {layer: map}}``
            computed differentiably from the same forward pass. Methods: the layer methods,
            ``cam``, ``saliency`` and ``grad`` (seed 004's smoothed-ReLU Grad).
    """
    maps = None
    with torch.enable_grad():
        if explainer is not None:
            method = explainer.get("method", "gradcam")
            info = method_info(method)
            if not info.shares_pass:
                raise AdvlensError(f"explainer method {method!r} cannot share the attack's forward; "
                                   "compute it inside loss_fn instead")
            names = layers_for(model, method, explainer.get("layers", "all"))
            with pass_context(model, method, explainer.get("tau")):
                p = forward_backward(
                    model, xa, names, explainer.get("target"), create_graph=True,
                    input_grad=info.kind == "input", check=False,
                )
            logits = p.logits
            maps = maps_from_pass(model, p, {method: names})
        else:
            logits = model(xa)
        if loss_fn is None:
            return logits, None
        pen = loss_fn(xa, logits, maps)
        pen = pen.reshape(len(xa), -1).sum(1) if pen.ndim else pen.expand(len(xa)) / len(xa)
    return logits, pen


def objective_grad(
    model: ClassifierModel,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    explainer: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the attack objective (see module docstring) w.r.t. ``x_adv`` ``[N,C,H,W]`` (same shape),
    and the logits ``[N,classes]``.

    ``loss_fn`` and ``explainer`` as in :func:`forward_penalty`.
    """
    xa = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, pen = forward_penalty(model, xa, loss_fn, explainer)
        if target is None:
            obj = F.cross_entropy(logits, y, reduction="sum")
        else:
            obj = -F.cross_entropy(logits, target, reduction="sum")
        if pen is not None:
            obj = obj - pen.sum()
        (grad,) = torch.autograd.grad(obj, xa)
    return grad, logits.detach()


#: the Python-only parameters of the attack objective (the CLI's ``--param`` gives numbers and strings)
_PYTHON_ONLY = "; it is a Python-API parameter and cannot be given on the command line (--param)"
_EXPLAINER_KEYS = ("method", "layers", "target", "tau")


def check_objective(loss_fn: Any, explainer: Any) -> None:
    """Check the extra objective term of :func:`forward_penalty`: ``loss_fn`` a callable or None,
    ``explainer`` None or a dict with keys among ``method``, ``layers``, ``target``, ``tau``."""
    if loss_fn is not None:
        check_callable(loss_fn, "loss_fn", "(x_adv, logits, maps) -> penalty [N] or scalar", _PYTHON_ONLY)
    if explainer is None:
        return
    if not isinstance(explainer, dict):
        raise AdvlensError(f"explainer must be None or a dict {{'method', 'layers', 'target', 'tau'}}, "
                           f"got {type(explainer).__name__}{_PYTHON_ONLY}")
    bad = sorted(set(map(str, explainer)) - set(_EXPLAINER_KEYS))
    if bad:
        raise AdvlensError(f"explainer has unknown key(s) {bad} (accepted: {list(_EXPLAINER_KEYS)})")
    if not isinstance(explainer.get("method", "gradcam"), str):
        raise AdvlensError(f"explainer['method'] must be a method name, got {explainer['method']!r}")
    check_layers(explainer.get("layers", "all"), "explainer['layers']")
    check_number(explainer.get("tau", 1e-4), "explainer['tau']", 0)


def check_weight(weight: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Check the per-pixel weight ``N_w`` (seed 004 eqs. 8–10): ``[N|1, 1|3, H, W]``, finite, ≥ 0."""
    if weight is None:
        return None
    n, _, h, w = x.shape
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[0] not in (1, n) \
            or weight.shape[1] not in (1, 3) or tuple(weight.shape[2:]) != (h, w):
        shape = list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise AdvlensError(f"weight must have shape [{n},1|3,{h},{w}] (per-pixel N_w), got {shape}")
    weight = weight.detach().to(device=x.device, dtype=x.dtype)
    if not torch.isfinite(weight).all() or (weight < 0).any():
        raise AdvlensError("weight must be finite and non-negative (e.g. Sobel edge magnitudes)")
    return weight


def finish(
    model: ClassifierModel,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    start: float,
    params: dict[str, Any],
    extras: dict[str, torch.Tensor] | None = None,
) -> AttackResult:
    """Evaluate ``x_adv`` ``[N,C,H,W]`` (against ``x`` ``[N,C,H,W]``, labels ``y`` ``[N]``) once and build the
    :class:`AttackResult`."""
    with torch.no_grad():
        prob = model(x_adv).softmax(1)
    conf, pred = prob.max(1)
    success = pred == target if target is not None else pred != y
    return AttackResult(
        x_adv=x_adv.detach(), success=success, pred=pred, confidence=conf,
        time_s=time.perf_counter() - start, y=y, params=params, extras=extras or {},
    )


def _labels(model: ClassifierModel, x: torch.Tensor, y: torch.Tensor | Sequence[int] | None, name: str):
    if y is None:
        return model.predict(x)
    return check_labels(y, name, len(x), len(model.labels), x.device, scalar=name == "target")


def attack(
    model: ClassifierModel,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    method: str = "pgd",
    seed: int = 0,
    target: int | torch.Tensor | None = None,
    chunk_size: int | str | None = None,
    **params: Any,
) -> AttackResult:
    """Attack ``model`` on ``x`` with ``method``.

    Args:
        model: a :class:`~advlens.models.ClassifierModel`.
        x: ``[N,3,H,W]`` in [0,1] on the model's device.
        y: true labels ``[N]``; None uses the model's clean predictions.
        method: one of :func:`list_attacks`.
        seed: randomness (random start, noise), drawn per image from the image's content
            (:mod:`advlens._rng`), so results do not depend on the batch (its size, the other
            images, their order, ``chunk_size``) — except where an attack's randomness is inherently
            per batch (DLFuzz's coverage-guided selection, strategies other than 2).
        target: targeted attack toward this class (int or ``[N]``); None = untargeted.
        chunk_size: attack at most this many images at once (None: all). ``"auto"``: the largest
            power of two whose all-layer pass fits the free memory, halved if a chunk runs out of
            memory (:mod:`advlens.explain.batching`). Every chunk gets the same ``seed`` (the draws
            are per image, so chunking does not change an image's randomness); per-image
            results are concatenated, ``time_s`` summed, batch-level extras (e.g. DLFuzz's
            coverage) stacked one row per chunk.
        **params: the method's parameters (``eps``, ``steps``, ``alpha``, …); ``None`` for a parameter that
            cannot be None means the attack's own default (as if it were not given).

    Example:
        >>> res = attack(model, x, y, method="pgd", eps=8/255, steps=10)
        >>> res.x_adv.shape, res.success.dtype
        (torch.Size([4, 3, 32, 32]), torch.bool)
        >>> 0.0 <= res.success_rate <= 1.0
        True
    """
    model = check_model(model)
    check_images(x)
    if not isinstance(method, str) or method not in _REGISTRY:
        raise unknown_name("attack", method, list_attacks())
    seed = check_int(seed, "seed")
    if chunk_size is not None and chunk_size != "auto":
        check_int(chunk_size, "chunk_size", 1)
    fn = _REGISTRY[method]
    sig = inspect.signature(fn).parameters
    # None for an option that cannot be None means "the attack's own default" (the CLI passes unset flags so)
    params = {k: v for k, v in params.items() if v is not None or k not in sig or "None" in str(sig[k].annotation)}
    accepted = set(inspect.signature(fn).parameters) - {"model", "x", "y", "target", "seed"}
    bad = sorted(set(params) - accepted)
    if bad:
        close = difflib.get_close_matches(bad[0], accepted, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AdvlensError(f"unknown parameter(s) {bad} for attack {method!r}{hint} (accepted: {sorted(accepted)})")
    y = _labels(model, x, y, "y")
    if target is not None:
        target = _labels(model, x, target, "target")
    size = resolve_batch_size(model, chunk_size, len(x))
    if size >= len(x) and chunk_size != "auto":
        return fn(model, x, y, target=target, seed=seed, **params)
    parts = run_batched(lambda sl: fn(model, x[sl], y[sl], target=None if target is None else target[sl],
                                      seed=seed, **params), len(x), size, backoff=chunk_size == "auto")
    return _concat_results(parts)


def _concat_results(parts: list[AttackResult]) -> AttackResult:
    """One :class:`AttackResult` from per-chunk results (see ``chunk_size`` of :func:`attack`)."""
    cat = {k: torch.cat([getattr(p, k) for p in parts]) for k in ("x_adv", "success", "pred", "confidence", "y")}
    extras = {}
    for k, v in parts[0].extras.items():
        group = torch.stack if k.startswith(BATCH_EXTRA) else torch.cat
        extras[k] = group([p.extras[k] for p in parts])
    return AttackResult(**cat, time_s=sum(p.time_s for p in parts), params=parts[0].params, extras=extras)


#: the attacks on interpretations (seed 004): ``steps``, ``base``, ``interpreter``; ``eps``/``alpha`` with PGD
_INTERPRETATION_ATTACKS = ("adv2", "advedge", "advedge+")


def budget_params(method: str, eps: float | None = None, steps: int | None = None, alpha: float | None = None,
                  base: str | None = None, interpreter: str | None = None) -> dict[str, Any]:
    """What one budget ``eps`` (L∞, [0,1] units) and one iteration count ``steps`` mean for ``method``, as
    the keyword arguments :func:`attack` takes (the CLI's ``--eps/--steps/--alpha`` and the explorer's
    fields); ``None`` values are left out, so the attack's own defaults apply.

    ``ifgsm``: ``eps`` is the largest budget tried (``max_eps``, step ``min(1/255, eps)``); ``dlfuzz`` and
    ``onepixel``: ``steps`` = iterations/generations; ``cw``, ``stadv``: ``steps`` only; ``adv2``/``advedge``
    (seed 004): ``steps``, ``base``, ``interpreter``, and ``eps``/``alpha`` with the PGD base.
    """
    params: dict[str, Any] = {
        "fgsm": {"eps": eps},
        "ifgsm": {"max_eps": eps, "eps_step": None if eps is None else min(1 / 255, eps)},
        "pgd": {"eps": eps, "steps": steps, "alpha": alpha},
        "dlfuzz": {"iterations": steps},
        "onepixel": {"iterations": steps},
        "cw": {"steps": steps},
        "stadv": {"steps": steps},
    }.get(method, {})
    if method in _INTERPRETATION_ATTACKS:
        params = {"steps": steps, "base": base, "interpreter": interpreter}
        if base in (None, "pgd"):
            params.update(eps=eps, alpha=alpha)
    return {k: v for k, v in params.items() if v is not None}
