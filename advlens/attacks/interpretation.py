"""Attacks on the classifier AND its interpreter (seed 004): ADV², AdvEdge and AdvEdge⁺.

All three minimise ``ℓ_prd(f(x̂), y_t) + λ·ℓ_int(g(x̂), m_t)`` (seed 004 eqs. 5–7) on top of a base
attack — PGD (eq. 8), C&W-L2 (eq. 9) or StAdv (eq. 10) — with

* ``ℓ_int = mean_ij (g(x̂) − m_t)²`` over [0,1]-normalized maps (REFERENCE.md: the code's mean
  squared difference), ``m_t`` the benign map ``g(x)`` of the true class by default;
* ADV² (Zhang et al.): the perturbation is unweighted;
* AdvEdge: the step / perturbation / flow is weighted per pixel by ``N_w = E(x)`` (seed 004,
  Sec. IV-B, eqs. 8–10 with ``N_w = E(x)``), ``E`` = :func:`edge_map`, the authors' Sobel edge map:
  ``skimage.filters.sobel`` of the channel-mean clean image, in [0, 1] for images in [0, 1];
* AdvEdge⁺: ``N_w = 1[E(x) > φ]`` with ``φ = 0.1`` on that [0, 1] scale (seed 004, Sec. IV-B,
  "the threshold φ is adjusted to 0.1"; 0.05 suits RTS, REFERENCE.md);
* against RTS, the extra encoder loss of seed 004 Sec. IV-E (after ADV²): ``+ w_enc·ℓ_enc(enc(x̂), y_t)``,
  ``ℓ_enc = −log softmax(s(x̂))_{y_t}`` with ``s`` the class scores of RTS's encoder
  (:func:`advlens.explain.rts.rts_with_scores`; untargeted: ``−CE(s, y)``, mirroring ``ℓ_prd``). On by
  default (``enc_loss=True``), ``w_enc = 0.1`` (the authors' ``0.1 * rts_adv_loss``; the paper gives no
  weight); ``enc_loss=False`` drops it.

The interpreter ``g`` is one of ``grad`` (smoothed-ReLU gradient, Sec. IV-C), ``cam`` (Sec. IV-D),
``gradcam``/``layercam`` (same category), ``rts`` (Sec. IV-E, a trained masking model) or ``mask``
(Sec. IV-F, the bi-level approximation of eq. 13). Engine interpreters share the attack's forward
pass (``explainer=``); ``rts`` and ``mask`` are computed inside the loss.

Departures from the paper's code (REFERENCE.md), by design: one stage with edge weighting
throughout (the paper's description; the code warms up toward ``y_t`` first), a constant ``λ``
(the code ramps ``c`` 5 → 10 for CAM) and plain cross-entropy (no label smoothing).
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch.nn import functional as F

from .._checks import AdvlensError, check_bool, check_int, check_number, unknown_name
from ..explain.api import explain, normalize_maps
from ..models.wrapper import ClassifierModel
from .base import _REGISTRY, AttackResult, register_attack

__all__ = ["edge_map", "edge_weights", "encoder_loss", "interpretation_attack", "INTERPRETERS", "BASES", "ENC_WEIGHT"]

#: interpreters an attack can target; "grad", "cam", "mask", "rts" are seed 004's four.
INTERPRETERS = ("grad", "cam", "gradcam", "layercam", "rts", "mask")
_ENGINE = ("grad", "cam", "gradcam", "layercam")
BASES = ("pgd", "cw", "stadv")
#: default interpretation-loss weight λ per base (PGD takes sign steps, so only the balance of the
#: two gradients matters there; C&W and StAdv add λ·ℓ_int to their own objective).
_DEFAULT_LAM = {"pgd": 10.0, "cw": 10.0, "stadv": 10.0}
#: weight of seed 004's RTS encoder loss ℓ_enc (Sec. IV-E); the authors' code: ``0.1 * rts_adv_loss``
ENC_WEIGHT = 0.1


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """Seed 004's edge map ``E(x)`` (Sec. IV-B, the weights of eqs. 8–10): the Sobel magnitude of the
    channel-mean image, exactly as the authors compute it with ``skimage.filters.sobel`` (REFERENCE.md).

    With ``g`` the channel mean, ``s = [1/4, 1/2, 1/4]`` (smoothing) and ``d = [1, 0, −1]`` (difference),
    ``g_h = g ⋆ (d ⊗ s)`` and ``g_v = g ⋆ (s ⊗ d)`` (derivatives along H and along W), and
    ``E = sqrt((g_h² + g_v²) / 2)`` — skimage's normalization (``sqrt(Σ_axes ĝ²) / sqrt(ndim)``). The border
    is scipy.ndimage's ``mode="reflect"`` (half-sample symmetric: ``a | a b c``), which for a 3-tap kernel
    is edge replication; the border pixels are computed, not zeroed (scikit-image ≥ 0.19; older releases,
    with ``mask=None``, set the one-pixel frame to 0). Equal to
    ``skimage.filters.sobel(x[n].mean(0))`` to ~1e-7 (float32) / 1e-15 (float64); torch ops on ``x``'s
    device and dtype.

    Args:
        x: ``[N,C,H,W]`` images (seed 004: ``C = 3``, in [0, 1]).

    Returns:
        ``[N,1,H,W]`` edge magnitudes, in [0, 1] for images in [0, 1] (a unit step gives ``1/√2``).
    """
    if x.ndim != 4:
        raise AdvlensError(f"edge_map: expected images [N,C,H,W], got shape {tuple(x.shape)}")
    g = F.pad(x.mean(dim=1, keepdim=True), (1, 1, 1, 1), mode="replicate")
    s = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    d = torch.tensor([1.0, 0.0, -1.0], dtype=x.dtype, device=x.device)
    kernels = torch.stack([torch.outer(d, s), torch.outer(s, d)])[:, None]  # [2,1,3,3]: along H, along W
    grad = F.conv2d(g, kernels)  # cross-correlation: the sign flip against ndi.convolve squares away
    return (grad.square().sum(dim=1, keepdim=True) / 2).sqrt()


def edge_weights(x: torch.Tensor, phi: float | None = None) -> torch.Tensor:
    """Edge weights ``N_w`` of seed 004 (Sec. IV-B): AdvEdge's ``E(x)``, AdvEdge⁺'s ``1[E(x) > φ]``.

    Args:
        x: ``[N,3,H,W]`` clean images in [0,1].
        phi: None for AdvEdge (the magnitudes themselves), a threshold for AdvEdge⁺ (``1[E > φ]``,
            the paper's ``φ = 0.1``), on the [0, 1] scale of :func:`edge_map`.

    Returns:
        ``[N,1,H,W]`` weights: :func:`edge_map` (skimage's Sobel of the channel mean, in [0, 1]) or
        its binarization.
    """
    e = edge_map(x)
    return e if phi is None else (e > phi).to(x.dtype)


def _map_class(target: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The class the interpreter explains on ``x̂``: the target, or the current prediction."""
    return target if target is not None else logits.detach().argmax(1)


def encoder_loss(scores: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Seed 004's RTS encoder loss ``ℓ_enc(enc(x̂), y_t)`` (Sec. IV-E) per image ``[N]``.

    Args:
        scores: ``[N,C]`` class scores of RTS's encoder on ``x̂``.
        y: ``[N]`` true classes; target: ``[N]`` ``y_t`` or None (untargeted).

    Returns:
        ``−log softmax(scores)_{y_t}`` (targeted), ``+log softmax(scores)_y`` (untargeted: the encoder is
        pushed away from ``y``, as ``ℓ_prd`` is).
    """
    logp = F.log_softmax(scores, dim=1)
    if target is not None:
        return -logp.gather(1, target[:, None])[:, 0]
    return logp.gather(1, y[:, None])[:, 0]


class _MapLoss:
    """``loss_fn(x̂, logits, maps) -> λ · mean_ij (g(x̂) − m_t)² [+ w_enc · ℓ_enc]`` per image ``[N]``."""

    def __init__(self, model: ClassifierModel, interpreter: str, m_t: torch.Tensor, lam: float,
                 y: torch.Tensor, target: torch.Tensor | None, layer: str | None, options: dict[str, Any]) -> None:
        self.model, self.interpreter, self.m_t, self.lam = model, interpreter, m_t, lam
        self.y, self.target, self.layer, self.options = y, target, layer, options
        self.enc_weight = float(options.get("enc_weight", ENC_WEIGHT)) if options.get("enc_loss", True) else 0.0
        self.mask_state = None
        self.enc_term: torch.Tensor | None = None  # the last w_enc·ℓ_enc [N] (RTS only), for inspection

    def explainer(self) -> dict[str, Any] | None:
        if self.interpreter not in _ENGINE:
            return None
        layers = "all" if self.interpreter in ("grad", "cam") else [self.layer]
        return {"method": self.interpreter, "layers": layers, "target": self.target,
                "tau": self.options.get("smooth_tau", 1e-4)}

    def adversarial_map(self, xa: torch.Tensor, logits: torch.Tensor, maps) -> torch.Tensor:
        if maps is not None:
            (m,) = maps[self.interpreter].values()
            return m
        cls = _map_class(self.target, logits)
        if self.interpreter == "rts":
            from ..explain.rts import rts_with_scores

            m, scores = rts_with_scores(self.model, xa, cls, data=self.options.get("rts_data"))
            if self.enc_weight > 0:
                self.enc_term = self.enc_weight * encoder_loss(scores, self.y, self.target)
            return normalize_maps(m)
        from .mask_bilevel import mask_map_step

        m, self.mask_state = mask_map_step(self.model, xa, cls, self.mask_state, self.options)
        return m

    def __call__(self, xa: torch.Tensor, logits: torch.Tensor, maps) -> torch.Tensor:
        self.enc_term = None
        m = self.adversarial_map(xa, logits, maps)
        loss = self.lam * (m - self.m_t).pow(2).mean(dim=(1, 2))
        return loss if self.enc_term is None else loss + self.enc_term


def _benign_map(model: ClassifierModel, x: torch.Tensor, interpreter: str, cls: torch.Tensor,
                layer: str | None, options: dict[str, Any]) -> torch.Tensor:
    kw: dict[str, Any] = {}
    if interpreter == "grad":
        kw["tau"] = options.get("smooth_tau", 1e-4)
    elif interpreter == "rts":
        kw["data"] = options.get("rts_data")
    elif interpreter == "mask":
        kw.update(options.get("mask_options", {}))
    layers = [layer] if interpreter in ("gradcam", "layercam") else "all"
    (m,) = explain(model, x, interpreter, layers=layers, target=cls, **kw).values()
    return m.detach()


def interpretation_attack(
    variant: str,
    model: ClassifierModel,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None = None,
    seed: int = 0,
    base: str = "pgd",
    interpreter: str = "cam",
    lam: float | None = None,
    eps: float = 0.031,
    alpha: float = 1 / 255,
    steps: int = 300,
    phi: float = 0.1,
    layer: str | None = None,
    target_map: torch.Tensor | None = None,
    base_params: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> AttackResult:
    """Shared body of :func:`adv2`, :func:`advedge` and :func:`advedge_plus` (see module docstring).

    Returns the base attack's result with ``params`` extended (``method`` = the variant, ``base``,
    ``interpreter``, ``lam``, ``phi``) and ``extras["target_map"]`` ``[N,H,W]`` = ``m_t``.

    ``seed`` goes to the base attack: PGD starts at ``x`` and C&W is deterministic; StAdv's random
    flow start is drawn per image from the image's content (:mod:`advlens._rng`), so results do not
    depend on the batch.
    """
    if variant not in ("adv2", "advedge", "advedge+"):
        raise unknown_name("interpretation attack", variant, ["adv2", "advedge", "advedge+"])
    if base not in BASES:
        raise unknown_name("base attack", base, BASES)
    if interpreter not in INTERPRETERS:
        raise unknown_name("interpreter", interpreter, INTERPRETERS)
    if base not in _REGISTRY:
        raise AdvlensError(f"base attack {base!r} is not available in this installation")
    lam = _DEFAULT_LAM[base] if lam is None else check_number(lam, "lam", 0, strict=False)
    phi = check_number(phi, "phi (AdvEdge+ edge threshold)", 0, strict=False)
    check_number(eps, "eps", 0, 1)
    check_number(alpha, "alpha", 0, 1)
    check_int(steps, "steps", 1)
    if layer is not None and not isinstance(layer, str):
        raise AdvlensError(f"layer must be a layer name or None, got {layer!r} ({type(layer).__name__})")
    if target_map is not None and not isinstance(target_map, torch.Tensor):
        raise AdvlensError(f"target_map must be a tensor [N,H,W] or None, got {type(target_map).__name__}")
    if target_map is not None and not bool(torch.isfinite(target_map).all()):
        raise AdvlensError("target_map contains NaN or infinite values")
    options = dict(options or {})
    if interpreter in ("gradcam", "layercam"):
        layer = layer or model.cam_layer or list(model.layers)[-1]
        model.resolve_layers([layer])
    start = time.perf_counter()
    x = x.detach()
    explained = target if (interpreter == "rts" and target is not None) else y  # REFERENCE: RTS maps y_t
    if target_map is None:
        target_map = _benign_map(model, x, interpreter, explained, layer, options)
    elif target_map.shape != (x.shape[0], *x.shape[-2:]):
        raise AdvlensError(f"target_map must have shape {[x.shape[0], *x.shape[-2:]]}, got {list(target_map.shape)}")
    weight = None if variant == "adv2" else edge_weights(x, phi if variant == "advedge+" else None)
    loss = _MapLoss(model, interpreter, target_map.to(x), float(lam), y, target, layer, options)
    kw: dict[str, Any] = dict(base_params or {})
    if base == "pgd":
        kw.update(eps=eps, alpha=alpha, steps=steps, random_start=False)  # validated by pgd
    else:
        kw.setdefault("steps", steps)
    res = _REGISTRY[base](model, x, y, target=target, seed=seed, loss_fn=loss, explainer=loss.explainer(),
                          weight=weight, **kw)
    res.time_s = time.perf_counter() - start
    res.params = {**res.params, "method": variant, "base": base, "interpreter": interpreter, "lam": float(lam),
                  "phi": phi if variant == "advedge+" else None, "layer": layer}
    if interpreter == "rts":
        res.params["enc_weight"] = loss.enc_weight  # 0.0: ℓ_enc switched off (enc_loss=False)
    res.extras["target_map"] = target_map
    return res


def _make(variant: str):
    def fn(
        model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0,
        base: str = "pgd", interpreter: str = "cam", lam: float | None = None, eps: float = 0.031,
        alpha: float = 1 / 255, steps: int = 300, phi: float = 0.1, layer: str | None = None,
        target_map: torch.Tensor | None = None, c: float | None = None, kappa: float | None = None,
        lr: float | None = None, binary_search_steps: int | None = None, flow_tau: float | None = None,
        smooth_tau: float = 1e-4, rts_data: str | None = None, mask_steps: int | None = None,
        enc_loss: bool = True, enc_weight: float = ENC_WEIGHT,
    ) -> AttackResult:
        smooth_tau = check_number(smooth_tau, "smooth_tau", 0)
        enc_loss = check_bool(enc_loss, "enc_loss")
        enc_weight = check_number(enc_weight, "enc_weight", 0, strict=False)
        if rts_data is not None and not isinstance(rts_data, str):
            raise AdvlensError(f"rts_data must be the name of the data the RTS masker trains on, got {rts_data!r}")
        if mask_steps is not None:
            check_int(mask_steps, "mask_steps", 0)
        if flow_tau is not None:
            check_number(flow_tau, "flow_tau", 0, strict=False)
        base_params = {k: v for k, v in {"c": c, "kappa": kappa, "lr": lr, "binary_search_steps": binary_search_steps,
                                         "tau": flow_tau}.items() if v is not None}
        allowed = {"pgd": set(), "cw": {"c", "kappa", "lr", "binary_search_steps"}, "stadv": {"kappa", "lr", "tau"}}
        bad = sorted(set(base_params) - allowed.get(base, set()))
        if bad:
            raise AdvlensError(f"parameter(s) {['flow_tau' if b == 'tau' else b for b in bad]} do not apply to base {base!r}")
        options: dict[str, Any] = {"smooth_tau": smooth_tau, "rts_data": rts_data, "enc_loss": enc_loss,
                                   "enc_weight": enc_weight}
        if mask_steps is not None:
            options["mask_options"] = {"steps": mask_steps}
        return interpretation_attack(variant, model, x, y, target, seed, base, interpreter, lam, eps, alpha, steps,
                                     phi, layer, target_map, base_params, options)

    fn.__name__ = fn.__qualname__ = variant.replace("+", "_plus")
    fn.__doc__ = f"""{variant} (seed 004) over a base attack; see :func:`interpretation_attack`.

    Args:
        base: ``pgd`` (eps, alpha, steps), ``cw`` (c, kappa, lr, binary_search_steps, steps) or
            ``stadv`` (flow_tau, kappa, lr, steps).
        interpreter: one of {INTERPRETERS}; layer: the layer of ``gradcam``/``layercam``.
        lam: weight λ of the interpretation loss (default 10).
        eps, alpha, steps: the paper's 0.031, 1/255, 300. phi: AdvEdge⁺ threshold (0.1).
        target_map: ``[N,H,W]`` map to imitate (default: the benign map of the true class).
        smooth_tau: τ of the smoothed ReLU for ``grad``; rts_data: data the RTS masker is trained
            on; mask_steps: MASK optimisation steps of the benign map.
        enc_loss, enc_weight: against ``rts``, add seed 004's encoder loss ``enc_weight·ℓ_enc`` (Sec. IV-E;
            default on, weight 0.1 as the authors' code); ``enc_loss=False`` = without it.
    """
    return fn


adv2 = register_attack("adv2")(_make("adv2"))
advedge = register_attack("advedge")(_make("advedge"))
advedge_plus = register_attack("advedge+")(_make("advedge+"))
