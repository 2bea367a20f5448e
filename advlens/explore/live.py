"""What the explorer computes for one image: attack it, scale the perturbation, draw K matched noises, and
compare the maps of every layer (seed 000's per-layer test, for one image).

All through the library's public API: :func:`advlens.attack`, :func:`advlens.matched_noise`,
:func:`advlens.explain` (one forward and one backward for all layers and all 2 + K inputs at once) and
:func:`advlens.metrics.cosine`. For a strength ``s`` (seed 000's 0.25×…4×), the adversarial input is
``clip(x + s·(x_adv − x))`` and the noise ``clip(x + s·N_g)``, ``N_g ~ N(μ_a, σ_a)`` of the perturbation
(seed 000 eqs. 6–8). A layer is *compromised* for this image when the cosine between its clean and
adversarial maps is below the median of the cosines of the K noise draws (seed 000 § III-C uses the
median over a data set; one image has only its own draws).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import metrics
from ..attacks import AttackResult, attack, budget_params, matched_noise
from ..explain import explain
from ..explain.methods import method_info
from ..models import ClassifierModel

__all__ = ["LiveParams", "attack_image", "compare_layers", "CONDITIONS"]

#: the three inputs shown side by side
CONDITIONS = ("clean", "adversarial", "noise")


@dataclass(frozen=True)
class LiveParams:
    """One explorer request, validated by the app.

    Attributes:
        attack: attack name; eps, steps: its budget and iterations (:func:`advlens.attacks.budget_params`;
            None = the attack's default). strength: scale of the perturbation. method: explainer.
        layers: ``"all"`` or layer names. k: noise draws. seed: seed of the attack and the noise.
        attack_params: ``(name, value)`` pairs used instead of ``eps``/``steps`` (a study's attack table).
    """

    attack: str
    eps: float | None
    steps: int | None
    strength: float
    method: str
    layers: str | tuple[str, ...]
    k: int
    seed: int
    attack_params: tuple[tuple[str, Any], ...] = ()

    def attack_key(self) -> tuple:
        """What the attack's result depends on (the strength, explainer and noise do not)."""
        return (self.attack, self.eps, self.steps, self.seed, self.attack_params)

    def params(self) -> dict[str, Any]:
        """The attack's keyword arguments: ``attack_params`` (a study's) when given, else ``eps``/``steps``."""
        return dict(self.attack_params) if self.attack_params else budget_params(self.attack, self.eps, self.steps)


def attack_image(model: ClassifierModel, x: torch.Tensor, p: LiveParams) -> AttackResult:
    """Attack ``x`` ``[1,3,H,W]`` (its predicted class) with ``p``'s attack at strength 1."""
    return attack(model, x, None, method=p.attack, seed=p.seed, **p.params())


def compare_layers(model: ClassifierModel, x: torch.Tensor, res: AttackResult, p: LiveParams,
                   stage: Callable[[str], None] = lambda s: None) -> dict:
    """The per-layer comparison of one image at ``p.strength``.

    Args:
        model: the classifier. x: the clean image ``[1,3,H,W]``. res: :func:`attack_image`'s result.
        p: the request. stage: called with ``"explain"`` before the pass (progress for the page).

    Returns:
        ``layers`` (forward order), ``inputs`` ``{condition: [3,H,W]}`` plus ``perturbation`` (amplified to
        [0,1] for display), ``maps`` ``{condition: {layer: [H,W]}}`` (raw), ``probs`` ``{condition: [C]}``,
        ``cosine`` ``{adversarial|noise: {layer: float}}`` (noise: median of the K draws), ``threshold``,
        ``compromised`` and ``attack_success``.
    """
    s, k = float(p.strength), int(p.k)
    x_s = (x + s * (res.x_adv - x)).clamp(0, 1)
    noises = torch.cat([matched_noise(x, res.x_adv, strength=s, seed=p.seed + j) for j in range(k)])
    xs = torch.cat([x, x_s, noises])  # [2 + K, 3, H, W]: one pass explains them all
    stage("explain")
    layers: str | Sequence[str] = "all" if method_info(p.method).kind in ("input", "head", "own") else p.layers
    maps = explain(model, xs, p.method, layers=layers, normalize=False, seed=p.seed)
    names = list(maps)
    cos = {n: metrics.cosine(maps[n][:1].expand(len(xs) - 1, -1, -1), maps[n][1:]) for n in names}  # [1 + K]
    threshold = {n: float(torch.quantile(c[1:].double(), 0.5)) for n, c in cos.items()}
    adversarial = {n: float(c[0]) for n, c in cos.items()}
    with torch.no_grad():
        probs = torch.softmax(model(xs[:3]).float(), dim=1)
    delta = x_s - x
    scale = delta.abs().amax().clamp_min(1e-12)
    return {
        "layers": names,
        "inputs": {"clean": x[0], "adversarial": x_s[0], "noise": noises[0], "perturbation": (0.5 + 0.5 * delta / scale)[0]},
        "maps": {c: {n: maps[n][i] for n in names} for i, c in enumerate(CONDITIONS)},
        "probs": {c: probs[i] for i, c in enumerate(CONDITIONS)},
        "cosine": {"adversarial": adversarial, "noise": threshold},
        "threshold": threshold,
        "compromised": [n for n in names if adversarial[n] < threshold[n]],
        "attack_success": bool(res.success[0]),
    }


def top_labels(probs: torch.Tensor, labels: Sequence[str], k: int = 5) -> list[dict]:
    """``[{"label", "p"}]`` of the ``k`` most probable classes of ``probs`` ``[C]``."""
    p, i = probs.topk(min(k, probs.numel()))
    return [{"label": labels[int(j)], "p": round(float(q), 4)} for q, j in zip(p, i)]

