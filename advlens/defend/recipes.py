"""Robust-training recipes: seed 001's adversarial retraining, PGD adversarial training and seed 004's
interpretation-robust training. Each fine-tunes a *copy* of a trained model (the original is untouched)
with :func:`advlens.defend.training.fit`, so every recipe is seeded, resumable and checkpointed.

- :func:`retrain` (seed 001, Sec. II-B "Adversarial (re)training" and Table 1): attack the training
  images with FGSM or the one-pixel attack against the trained model, add the *successful* adversarial
  images (with their true labels) to the training set, and continue training from the trained weights.
  The results are seed 001's "FGSM_immune" and "One-pixel_immune" models.
- :func:`adversarial_train` (Madry et al.; seed 004 Sec. VII "AT"): every batch is replaced by its PGD
  examples against the current weights. With ``gamma > 0`` it becomes seed 004's interpretation-robust
  training (eq. in Sec. VII-B, after Boopathy et al. [45]):

      min_θ  E[ CE(f(x̂), y) + γ · D(x, x̂) ],
      D(x, x̂) = ½ (‖g_y(x) − g_y(x̂)‖₁ + ‖g_t(x) − g_t(x̂)‖₁),

  where ``g_c`` is the CAM map of class ``c`` (ReLU, normalized to unit L1 mass), ``y`` the true and
  ``t`` the most likely other class of ``x̂``. ``x̂`` is the PGD (cross-entropy) example — a cheaper
  stand-in for the worst-case interpretation difference ``D_worst`` of the paper.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from .._checks import AdvlensError, check_bool, check_int, check_number, unknown_name
from ..attacks import attack
from ..explain.engine import capture
from ..models.wrapper import ClassifierModel
from .training import fit, read_checkpoint

__all__ = ["retrain", "adversarial_train", "interpretation_difference", "training_data", "save_model", "RETRAIN_ATTACKS"]

#: seed 001's retraining attacks and their defaults (FGSM eps 0.1 = seed 003's largest; one-pixel with a
#: smaller population than Su et al. so that attacking hundreds of training images takes CPU minutes)
RETRAIN_ATTACKS: dict[str, dict[str, Any]] = {
    "fgsm": {"eps": 0.1},
    "onepixel": {"pixels": 1, "popsize": 100, "iterations": 30},
}


def training_data(data: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split ``(x [N,3,H,W], y [N])`` a small model of ``data`` was trained on."""
    from ..data import load_images
    from ..models.small_vgg import _N_IMAGES, TRAINABLE_DATA

    if data not in TRAINABLE_DATA:
        raise unknown_name("training data", data, TRAINABLE_DATA)
    batch = load_images(data, n=_N_IMAGES.get(data), split="train", seed=0)
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
    **attack_params: Any,
) -> tuple[ClassifierModel, dict[str, Any]]:
    """Seed 001's adversarial retraining: an "immune" copy of ``model`` (see the module docstring).

    Args:
        model: a model trained on ``data`` (``digits``, ``lfw``, ``shapes``).
        method: ``fgsm`` or ``onepixel`` (defaults in :data:`RETRAIN_ATTACKS`, overridden by ``attack_params``).
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
    params = {**RETRAIN_ATTACKS[method], **attack_params}
    net = _copy(model)
    x, y = (t.to(model.device) for t in training_data(data))
    n_attack = len(x) if n_attack is None else min(int(n_attack), len(x))
    recipe = {"method": f"retrain-{method}", "data": data, "attack": params, "n_attack": n_attack, "epochs": epochs,
              "lr": lr, "seed": seed, "model": model.name}
    if checkpoint is not None and Path(checkpoint).is_file():
        tensors, _ = read_checkpoint(checkpoint)
        x_adv, y_adv = tensors["extra.x_adv"].to(x.device), tensors["extra.y_adv"].to(x.device)
    else:
        model.eval()
        x_adv, y_adv = _attack_batches(model, x[:n_attack], y[:n_attack], method, params, seed, 128, progress)
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
) -> tuple[ClassifierModel, dict[str, Any]]:
    """PGD adversarial training (``gamma = 0``) or interpretation-robust training (``gamma > 0``, seed 004).

    Fine-tunes a copy of ``model`` on ``data``'s train split; each batch is attacked by L∞ PGD (``eps``,
    ``steps``, step ``alpha`` = 2.5·eps/steps by default, random start) against the current weights.

    Returns:
        ``(robust_model, info)`` with the recipe and the training summary.
    """
    eps, steps = check_number(eps, "eps", 0, 1), check_int(steps, "steps", 1)
    alpha = None if alpha is None else check_number(alpha, "alpha", 0, 1)
    gamma = check_number(gamma, "gamma", 0, strict=False)
    _check_training(epochs, lr, seed, stop_after, progress)
    if gamma > 0 and (model.classifier is None or model.cam_layer is None):
        raise AdvlensError(f"interpretation-robust training needs a CAM model (cam_layer and classifier); {model.name} has none")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    net = _copy(model)
    x, y = (t.to(model.device) for t in training_data(data))
    name = "robust" if gamma > 0 else "pgd_at"
    recipe = {"method": name, "data": data, "eps": eps, "steps": steps, "alpha": alpha, "gamma": gamma,
              "epochs": epochs, "lr": lr, "seed": seed, "model": model.name}
    flips = data != "digits"

    def loss(m: ClassifierModel, xb: torch.Tensor, yb: torch.Tensor, s: int) -> torch.Tensor:
        xb = _flip(xb, s, flips)
        m.eval()  # attack with the running BatchNorm statistics, then train on the result
        x_adv = attack(m, xb, yb, method="pgd", eps=eps, alpha=alpha, steps=steps, seed=s).x_adv
        m.train()
        if gamma == 0:
            return F.cross_entropy(m(x_adv), yb)
        with capture(m, [m.cam_layer]) as acts:
            logits = m(torch.cat([xb, x_adv]))
            feats = acts[m.cam_layer]
        n = len(xb)
        d = interpretation_difference(m, feats[:n], feats[n:], yb, logits[n:])
        return F.cross_entropy(logits[n:], yb) + gamma * d.mean()

    summary = fit(net, x, y, loss, epochs, recipe, lr=lr, seed=seed, checkpoint=checkpoint, stop_after=stop_after,
                  progress=progress)
    summary.pop("extra")
    net.name = f"{model.name}+{name}"
    return net, {"recipe": recipe, "n_train": len(x), **summary}
