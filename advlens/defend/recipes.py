"""Robust-training recipes: seed 001's adversarial retraining, PGD adversarial training and seed 004's
interpretation-robust training. Each fine-tunes a *copy* of a trained model (the original is untouched)
with :func:`advlens.defend.training.fit`, so every recipe is seeded, resumable and checkpointed.

- :func:`retrain` (seed 001, Sec. II-B "Adversarial (re)training" and Table 1): attack the training
  images with FGSM or the one-pixel attack against the trained model, add the *successful* adversarial
  images (with their true labels) to the training set, and continue training from the trained weights.
  The results are seed 001's "FGSM_immune" and "One-pixel_immune" models. Seed 001's FGSM is iterative
  (Sec. II-A: "a gradual increase in perturbation until the label ... changes"), so by default
  (``fgsm_form="iterative"``) each training image gets :func:`advlens.attacks.fgsm.ifgsm`'s minimal
  flipping ε (steps of 1/255 up to 32/255); ``fgsm_form="single"`` is one FGSM step at a fixed ε (0.1).
- :func:`adversarial_train` (Madry et al.; seed 004 Sec. VI-B "AT"; ``gamma = 0``): every batch is
  replaced by its PGD examples against the current weights. With ``gamma > 0`` it is seed 004's
  interpretation-robust training (Sec. VI-B, "Interpretation-Based Robust Training", after Boopathy et
  al. [45]), by default (``objective="paper"``) the paper's min-max objective

      min_θ  E[ CE(f(x), y) + γ · D_worst(x) ],   D_worst(x) = max_{‖x̂ − x‖∞ ≤ ε} D(x, x̂),
      D(x, x̂) = ½ (‖g_y(x) − g_y(x̂)‖₁ + ‖g_t(x) − g_t(x̂)‖₁),

  with the training loss on the *clean* image and the inner maximization of ``D`` itself by L∞ PGD
  (:func:`worst_case_example`). ``g_c`` is the CAM map of class ``c`` (ReLU, normalized to unit L1
  mass), ``y`` the true and ``t`` the most likely other class of ``x̂``. ``objective="pgd_ce"`` is the
  earlier advlens form ``CE(f(x̂), y) + γ·D(x, x̂)`` at the PGD cross-entropy example ``x̂``.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from .._checks import AdvlensError, check_bool, check_int, check_number, unknown_name
from .._rng import rand_per_image
from ..attacks import attack
from ..attacks.base import project_linf
from ..explain.engine import capture
from ..models.wrapper import ClassifierModel
from .training import fit, read_checkpoint

__all__ = ["retrain", "adversarial_train", "interpretation_difference", "worst_case_example", "robust_loss",
           "training_data", "save_model", "RETRAIN_ATTACKS", "FGSM_FORMS", "OBJECTIVES", "TRAINING_RECIPES",
           "ROBUST_GAMMA"]

#: seed 001's retraining attacks and their defaults (one-pixel with a smaller population than Su et al. so
#: that attacking hundreds of training images takes CPU minutes)
RETRAIN_ATTACKS: dict[str, dict[str, Any]] = {
    "fgsm": {},  # see FGSM_FORMS
    "onepixel": {"pixels": 1, "popsize": 100, "iterations": 30},
}
#: ``fgsm_form`` of :func:`retrain` -> (advlens attack, its defaults): seed 001's iterative FGSM (minimal
#: flipping eps, as the signatures study runs it) or one FGSM step at eps 0.1 (seed 003's largest)
FGSM_FORMS: dict[str, tuple[str, dict[str, Any]]] = {
    "iterative": ("ifgsm", {"eps_step": 1 / 255, "max_eps": 32 / 255}),
    "single": ("fgsm", {"eps": 0.1}),
}
#: ``objective`` of :func:`adversarial_train` with ``gamma > 0`` (module docstring)
OBJECTIVES = ("paper", "pgd_ce")


def training_data(data: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The ``split`` (``train``, or ``test`` for its accuracy) ``(x [N,3,H,W], y [N])`` of the images a small
    model of ``data`` was trained on."""
    from ..data import load_images
    from ..models.small_vgg import _N_IMAGES, TRAINABLE_DATA

    if data not in TRAINABLE_DATA:
        raise unknown_name("training data", data, TRAINABLE_DATA)
    batch = load_images(data, n=_N_IMAGES.get(data), split=split, seed=0)
    return batch.x, batch.y


def save_model(model: ClassifierModel, path: str | Path, info: dict[str, Any]) -> Path:
    """Write a trained model as safetensors (atomically) with its labels, input size and recipe; load it
    back with ``al.load_model("small_vgg_<data>", weights=path)``."""
    from ..models.small_vgg import _save

    path = Path(path)
    meta = {"labels": model.labels, "input_size": list(model.input_size), "name": model.name,
            **{k: v for k, v in info.items() if k != "extra"}}
    _save(model.net, path, meta)
    return path


def _check_training(epochs: Any, lr: Any, seed: Any, stop_after: Any, progress: Any) -> None:
    """The parameters every recipe shares, checked before any attack or training starts."""
    check_int(epochs, "epochs", 1)
    check_number(lr, "lr", 0)
    check_int(seed, "seed")
    if stop_after is not None:
        check_int(stop_after, "stop_after", 0)
    check_bool(progress, "progress")


def _copy(model: ClassifierModel) -> ClassifierModel:
    if type(model) is not ClassifierModel:
        raise AdvlensError(f"robust training needs an undefended ClassifierModel, got {type(model).__name__}")
    return copy.deepcopy(model)


def _flip(x: torch.Tensor, seed: int, enabled: bool) -> torch.Tensor:
    """Random horizontal flips (as the small models were trained; not for digits)."""
    if not enabled:
        return x
    gen = torch.Generator().manual_seed(seed)
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _attack_batches(model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, method: str, params: dict[str, Any],
                    seed: int, batch_size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack ``x`` in batches; the successful adversarial images and their true labels."""
    chunks = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"{method} on the training set", unit="batch")
    keep_x, keep_y = [], []
    for i in chunks:
        res = attack(model, x[i:i + batch_size], y[i:i + batch_size], method=method, seed=seed + i, **params)
        keep_x.append(res.x_adv[res.success])
        keep_y.append(res.y[res.success])
    return torch.cat(keep_x), torch.cat(keep_y)


def retrain(
    model: ClassifierModel,
    data: str,
    method: str = "fgsm",
    epochs: int = 5,
    n_attack: int | None = None,
    lr: float = 5e-4,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = False,
    fgsm_form: str = "iterative",
    **attack_params: Any,
) -> tuple[ClassifierModel, dict[str, Any]]:
    """Seed 001's adversarial retraining: an "immune" copy of ``model`` (see the module docstring).

    Args:
        model: a model trained on ``data`` (``digits``, ``lfw``, ``shapes``).
        method: ``fgsm`` or ``onepixel`` (defaults in :data:`RETRAIN_ATTACKS` / :data:`FGSM_FORMS`, overridden
            by ``attack_params``).
        fgsm_form: ``iterative`` (seed 001: minimal flipping ε per image, ``eps_step``/``max_eps``) or
            ``single`` (one FGSM step at ``eps``, 0.1); only for ``method="fgsm"``.
        n_attack: attack only the first ``n_attack`` training images (None: all).
        checkpoint: resumable checkpoint; it also keeps the adversarial training images, so a resumed
            run does not attack again.

    Returns:
        ``(immune_model, info)``; ``info`` has ``n_train``, ``n_adversarial`` (added images),
        ``attack_success`` on the attacked training images, the recipe and the training summary.
    """
    if not isinstance(method, str) or method not in RETRAIN_ATTACKS:
        raise unknown_name("retraining attack", method, RETRAIN_ATTACKS)
    _check_training(epochs, lr, seed, stop_after, progress)
    if n_attack is not None:
        check_int(n_attack, "n_attack", 1)
    if not isinstance(fgsm_form, str) or fgsm_form not in FGSM_FORMS:
        raise unknown_name("fgsm_form", fgsm_form, FGSM_FORMS)
    attack_name, defaults = FGSM_FORMS[fgsm_form] if method == "fgsm" else (method, RETRAIN_ATTACKS[method])
    params = {**defaults, **attack_params}
    net = _copy(model)
    x, y = (t.to(model.device) for t in training_data(data))
    n_attack = len(x) if n_attack is None else min(int(n_attack), len(x))
    recipe = {"method": f"retrain-{method}", "data": data, "attack": params, "n_attack": n_attack, "epochs": epochs,
              "lr": lr, "seed": seed, "model": model.name}
    if method == "fgsm":
        recipe["fgsm_form"] = fgsm_form
    if checkpoint is not None and Path(checkpoint).is_file():
        tensors, _ = read_checkpoint(checkpoint)
        x_adv, y_adv = tensors["extra.x_adv"].to(x.device), tensors["extra.y_adv"].to(x.device)
    else:
        model.eval()
        x_adv, y_adv = _attack_batches(model, x[:n_attack], y[:n_attack], attack_name, params, seed, 128, progress)
    x_all, y_all = torch.cat([x, x_adv]), torch.cat([y, y_adv])
    flips = data != "digits"

    def loss(m: ClassifierModel, xb: torch.Tensor, yb: torch.Tensor, s: int) -> torch.Tensor:
        return F.cross_entropy(m(_flip(xb, s, flips)), yb)

    summary = fit(net, x_all, y_all, loss, epochs, recipe, lr=lr, seed=seed, checkpoint=checkpoint,
                  extra={"x_adv": x_adv, "y_adv": y_adv}, stop_after=stop_after, progress=progress)
    summary.pop("extra")
    info = {"recipe": recipe, "n_train": len(x), "n_adversarial": len(x_adv),
            "attack_success": len(x_adv) / max(n_attack, 1), **summary}
    net.name = f"{model.name}+{method}_immune"
    return net, info


def interpretation_difference(model: ClassifierModel, feats: torch.Tensor, feats_adv: torch.Tensor, y: torch.Tensor,
                              logits_adv: torch.Tensor) -> torch.Tensor:
    """Seed 004's 2-class L1 interpretation difference ``D(x, x̂)`` ``[N]`` from CAM-layer activations ``[N,K,h,w]``."""
    weight = model.classifier.weight  # [C, K]
    other = logits_adv.detach().scatter(1, y[:, None], float("-inf")).argmax(1)

    def cam(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        m = torch.relu(torch.einsum("nk,nkhw->nhw", weight[c], a)).flatten(1)
        return m / m.sum(1, keepdim=True).clamp_min(1e-8)

    d_y = (cam(feats, y) - cam(feats_adv, y)).abs().sum(1)
    d_t = (cam(feats, other) - cam(feats_adv, other)).abs().sum(1)
    return 0.5 * (d_y + d_t)


def _cam_pass(model: ClassifierModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N,C]`` and CAM-layer activations ``[N,K,h,w]`` of one forward pass."""
    with capture(model, [model.cam_layer]) as acts:
        logits = model(x)
        feats = acts[model.cam_layer]
    return logits, feats


def worst_case_example(model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                       steps: int, seed: int) -> torch.Tensor:
    """The inner maximization of seed 004's interpretation-robust training (Sec. VI-B, ``D_worst``):
    ``x̂ ≈ argmax_{‖x̂ − x‖∞ ≤ ε, x̂ ∈ [0,1]} D(x, x̂)`` by L∞ PGD on :func:`interpretation_difference`
    itself (sign ascent with step ``alpha``, ``steps`` steps), started uniformly in the ε-ball (per-image
    seeds, :mod:`advlens._rng`; at ``x̂ = x`` the L1 difference has no gradient).

    Shape: ``x`` ``[N,3,H,W]``, ``y`` ``[N]`` → ``x̂`` ``[N,3,H,W]`` (detached), ``‖x̂ − x‖∞ ≤ eps``.
    """
    x = x.detach()
    with torch.no_grad():
        _, feats = _cam_pass(model, x)
    x_adv = torch.clamp(x + eps * (rand_per_image(x, seed) * 2 - 1), 0.0, 1.0)
    for _ in range(steps):
        xa = x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits, feats_adv = _cam_pass(model, xa)
            (g,) = torch.autograd.grad(interpretation_difference(model, feats, feats_adv, y, logits).sum(), xa)
        x_adv = project_linf(x_adv.detach() + alpha * g.sign(), x, eps)
    return x_adv.detach()


def robust_loss(model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, gamma: float, eps: float, alpha: float,
                steps: int, seed: int, objective: str = "paper") -> torch.Tensor:
    """One batch's loss of :func:`adversarial_train` (scalar, for ``x`` ``[N,3,H,W]``, ``y`` ``[N]``; the examples are
    made in eval mode, the loss
    is computed in the mode the model is in on entry).

    - ``objective="paper"`` (seed 004 Sec. VI-B): ``CE(f(x), y) + γ · mean D(x, x̂_w)``, ``x̂_w`` =
      :func:`worst_case_example`; with ``γ = 0`` exactly ``CE(f(x), y)`` (no example is made).
    - ``objective="pgd_ce"``: ``CE(f(x̂), y) + γ · mean D(x, x̂)`` at the PGD (cross-entropy) example ``x̂``;
      ``γ = 0`` is Madry et al.'s PGD adversarial training.

    With ``γ > 0`` clean and adversarial images go through one forward pass (shared BatchNorm statistics).
    """
    if objective not in OBJECTIVES:
        raise unknown_name("robust-training objective", objective, OBJECTIVES)
    if objective == "paper" and gamma == 0:
        return F.cross_entropy(model(x), y)
    training = model.training
    model.eval()  # attack with the running BatchNorm statistics, then train on the result
    if objective == "paper":
        x_adv = worst_case_example(model, x, y, eps, alpha, steps, seed)
    else:
        x_adv = attack(model, x, y, method="pgd", eps=eps, alpha=alpha, steps=steps, seed=seed).x_adv
    model.train(training)
    if gamma == 0:
        return F.cross_entropy(model(x_adv), y)
    n = len(x)
    logits, feats = _cam_pass(model, torch.cat([x, x_adv]))
    d = interpretation_difference(model, feats[:n], feats[n:], y, logits[n:])
    ce = F.cross_entropy(logits[:n] if objective == "paper" else logits[n:], y)
    return ce + gamma * d.mean()


def adversarial_train(
    model: ClassifierModel,
    data: str,
    eps: float = 0.031,
    steps: int = 7,
    alpha: float | None = None,
    gamma: float = 0.0,
    epochs: int = 5,
    lr: float = 5e-4,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = False,
    objective: str | None = None,
) -> tuple[ClassifierModel, dict[str, Any]]:
    """PGD adversarial training (``gamma = 0``) or interpretation-robust training (``gamma > 0``, seed 004).

    Fine-tunes a copy of ``model`` on ``data``'s train split with :func:`robust_loss`; each batch's example
    is made by L∞ PGD (``eps``, ``steps``, step ``alpha`` = 2.5·eps/steps by default, random start) against
    the current weights.

    Args:
        objective: ``paper`` (clean CE + γ·worst-case interpretation difference, seed 004 Sec. VI-B) or
            ``pgd_ce`` (CE and difference at the PGD cross-entropy example); default (None): ``paper`` when
            ``gamma > 0``, ``pgd_ce`` (Madry et al.'s AT) when ``gamma = 0``.

    Returns:
        ``(robust_model, info)`` with the recipe and the training summary.
    """
    eps, steps = check_number(eps, "eps", 0, 1), check_int(steps, "steps", 1)
    alpha = None if alpha is None else check_number(alpha, "alpha", 0, 1)
    gamma = check_number(gamma, "gamma", 0, strict=False)
    _check_training(epochs, lr, seed, stop_after, progress)
    if objective is None:
        objective = "paper" if gamma > 0 else "pgd_ce"
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise unknown_name("robust-training objective", objective, OBJECTIVES)
    if gamma > 0 and (model.classifier is None or model.cam_layer is None):
        raise AdvlensError(f"interpretation-robust training needs a CAM model (cam_layer and classifier); {model.name} has none")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    net = _copy(model)
    x, y = (t.to(model.device) for t in training_data(data))
    name = "robust" if gamma > 0 else "pgd_at" if objective == "pgd_ce" else "clean"
    recipe = {"method": name, "data": data, "eps": eps, "steps": steps, "alpha": alpha, "gamma": gamma,
              "objective": objective, "epochs": epochs, "lr": lr, "seed": seed, "model": model.name}
    flips = data != "digits"

    def loss(m: ClassifierModel, xb: torch.Tensor, yb: torch.Tensor, s: int) -> torch.Tensor:
        return robust_loss(m, _flip(xb, s, flips), yb, gamma, eps, alpha, steps, s, objective)

    summary = fit(net, x, y, loss, epochs, recipe, lr=lr, seed=seed, checkpoint=checkpoint, stop_after=stop_after,
                  progress=progress)
    summary.pop("extra")
    net.name = f"{model.name}+{name}"
    return net, {"recipe": recipe, "n_train": len(x), **summary}


#: γ of the ``robust`` recipe (seed 004 Sec. VI-B's weight of the worst-case interpretation difference)
ROBUST_GAMMA = 2.0

#: the training defenses by name: ``(recipe, its fixed arguments)``; the defenses study and ``advlens defend
#: train`` read this (the recipes' other defaults are their signatures')
TRAINING_RECIPES: dict[str, tuple[Callable[..., tuple[ClassifierModel, dict[str, Any]]], dict[str, Any]]] = {
    "retrain-fgsm": (retrain, {"method": "fgsm"}),
    "retrain-onepixel": (retrain, {"method": "onepixel"}),
    "pgd_at": (adversarial_train, {}),
    "robust": (adversarial_train, {"gamma": ROBUST_GAMMA}),
}
