"""Defenses under plain and adaptive attacks (seeds 001, 002, 004; Athalye et al. 2018 for the adaptive part).

One unit per model entry × defense of ``spec.defenses`` (``{kind, **params}``; kinds: ``none``, the input
transforms of :mod:`advlens.defend.transforms`, and the training recipes ``retrain-fgsm``,
``retrain-onepixel`` (seed 001), ``pgd_at`` and ``robust`` (seed 004)). The defended model is attacked
by every attack of ``spec.attack["method"]`` (``+``-separated, parameters in sub-tables) in three modes:

- ``transfer``: adversarial images made against the *undefended* model (the adversarial part of seed
  001's fixed "clear+fgsm_test" set — its successful ones, see :func:`table1` — and the usual
  non-adaptive evaluation of a preprocessing defense);
- ``plain``: the attack run against the defended model as it is (its true, possibly masked gradient);
- ``adaptive``: against transforms, the attack on the BPDA/EOT view (``DefendedModel.adaptive``);
  trained defenses are already attacked white-box by ``plain``.

Each row records accuracy on the defended model, ``adv_success`` (the attack fooled the model it ran
on: the undefended model for ``transfer``, else the defended model / its adaptive view), ``clean_images``
and the explanation shift of the defended model (Kendall τ and cosine between the Grad-CAM maps, CAM layer, true class, of clean and
adversarial input; τ is undefined — NaN, left out of means — where the adversarial map vanishes). Trained defenses and ``none`` also get seed 004 Table VI's sweep
(:func:`_sweep`) at each ε of ``attack["sweep"]`` (default the paper's 2, 4, 6, 8, 9, 10/255): accuracy under
PGD and Kendall τ of the CAM maps under the attack on the interpretation (``attack["sweep_form"]``). With ``spec.detectors``, each detector is fitted on
train images (``fit_size``) and attacked by plain PGD and by PGD that also lowers the detector's score
(:func:`advlens.defend.detector_attack.detector_attack`; a detector entry's ``weight`` scales that term).
"""
from __future__ import annotations

import time
from typing import Any, Literal

import pandas as pd
import torch

from .._checks import unknown_name
from ..attacks import attack
from ..attacks.pgd import EVAL_PGD
from ..data import load_images
from ..defend import TRANSFORMS, wrap
from ..defend.recipes import TRAINING_RECIPES, worst_case_example
from ..explain import explain
from ..metrics import cosine, kendall_tau
from ._common import entries_on_test_split, load_entry, safe_name
from .runner import Unit
from .defenses_report import accuracy_table, derived, detection_rates, report, table1, table6
from .spec import FitSize, KindTables, StudySpec, register_study

__all__ = ["DefensesSpec", "plan", "report", "derived", "TRAINED", "GRADIENT_ATTACKS", "table1", "accuracy_table",
           "detection_rates", "table6", "SWEEP_FORMS", "PAPER_SWEEP"]


class DefensesSpec(StudySpec):
    """Settings of the defenses study (seeds 001, 002, 004) under plain and adaptive attacks.

    Attributes:
        defenses: ``{kind, **params}`` tables — ``none``, an input transform (``median``, ``squeeze``,
            ``blur``, ``jpeg``, ``noise``) or a training recipe (``retrain-fgsm``, ``retrain-onepixel``,
            ``pgd_at``, ``robust``); ``attacks = [...]`` limits the attacks run on it.
        detectors: ``{kind, **params}`` tables fitted and evaluated beside (optional).
        fit_size: train-split images each detector is fitted on (at least 8).
    """

    study: Literal["defenses"] = "defenses"
    defenses: KindTables
    detectors: KindTables
    fit_size: FitSize


# Defenses (seed 001 Table 1, seed 004 Sec. VII-G / Table VI, seed 002's blur) under transfer, plain and
# adaptive (BPDA / EOT) attacks; explanation shift as Kendall tau of Grad-CAM.
register_study("defenses", DefensesSpec, presets={"defenses": {
    "models": [{"model": "small_vgg_digits", "data": "digits", "split": "test"},
               {"model": "small_vgg_shapes", "data": "shapes", "split": "test", "n": 2500},
               {"model": "small_vgg_lfw", "data": "lfw", "split": "test"}],
    "attack": {"method": "fgsm+pgd+onepixel", "fgsm": {"eps": 0.1},
               "pgd": dict(EVAL_PGD),
               "onepixel": {"pixels": 1, "popsize": 50, "iterations": 20}, "onepixel_limit": 32, "eot": 8,
               "sweep": [2 / 255, 4 / 255, 6 / 255, 8 / 255, 9 / 255, 10 / 255], "sweep_steps": 10},
    "defenses": [
        {"kind": "none"},
        {"kind": "median", "k": 3, "attacks": ["fgsm", "pgd"]},
        {"kind": "squeeze", "bits": 3, "attacks": ["fgsm", "pgd"]},
        {"kind": "blur", "sigma": 1.0, "attacks": ["fgsm", "pgd"]},
        {"kind": "jpeg", "quality": 75, "attacks": ["fgsm", "pgd"]},
        {"kind": "noise", "sigma": 0.1, "attacks": ["fgsm", "pgd"]},
        {"kind": "retrain-fgsm", "epochs": 3},
        {"kind": "retrain-onepixel", "epochs": 3, "n_attack": 300, "popsize": 50, "iterations": 20},
        {"kind": "pgd_at", "eps": 0.031, "steps": 5, "epochs": 3, "attacks": ["fgsm", "pgd"]},
        {"kind": "robust", "eps": 0.031, "steps": 5, "epochs": 3, "attacks": ["fgsm", "pgd"]},
    ],
    "detectors": [{"kind": "behavior", "copies": 20}, {"kind": "ensemble", "interpreters": ["grad", "cam"]}],
    "limit": 128, "fit_size": 300,
}})

#: training defenses: kind -> (recipe, its fixed arguments)
TRAINED = TRAINING_RECIPES
GRADIENT_ATTACKS = ("fgsm", "pgd")
DEFAULT_ATTACKS = {"fgsm": {"eps": 0.1}, "pgd": dict(EVAL_PGD),
                   "onepixel": {"pixels": 1, "popsize": 100, "iterations": 30}}


def _attacks(spec: DefensesSpec) -> dict[str, dict[str, Any]]:
    names = [a for a in spec.attack["method"].split("+") if a]
    for a in names:
        if a not in DEFAULT_ATTACKS:
            raise unknown_name("attack of a defenses study", a, DEFAULT_ATTACKS)
    return {a: {**DEFAULT_ATTACKS[a], **spec.attack.get(a, {})} for a in names}


def _check_defense(cfg: dict[str, Any]) -> None:
    kind = cfg.get("kind")
    if kind != "none" and kind not in TRANSFORMS and kind not in TRAINED:
        raise unknown_name("defense", kind, ["none", *TRANSFORMS, *TRAINED])


def plan(spec: DefensesSpec) -> list[Unit]:
    """One unit per model entry × defense (``none`` first, added when missing)."""
    attacks = _attacks(spec)
    configs = [dict(c) for c in spec.defenses]
    if not any(c.get("kind") == "none" for c in configs):
        configs.insert(0, {"kind": "none"})
    for c in configs:
        _check_defense(c)
    units = []
    for mi, entry in enumerate(entries_on_test_split(spec, "evaluates split 'test' (training uses 'train')")):
        model, batch = load_entry(entry, spec)
        memo: dict[str, torch.Tensor] = {}  # transfer examples, made once per entry
        for di, cfg in enumerate(configs):
            key = f"{mi:02d}-{safe_name(model.name)}-{di:02d}-{safe_name(cfg['kind'])}"
            units.append(Unit(key, lambda m, b, c=cfg, e=entry, mm=memo: _run(spec, attacks, m, b, c, e, mm),
                              (model, batch)))
        if spec.detectors:
            fit = load_images(entry["data"], n=entry.get("n"), split="train", seed=spec.seed,
                              skip_bad=spec.skip_bad, **model.image_options())
            units.append(Unit(f"{mi:02d}-{safe_name(model.name)}-detectors",
                              lambda m, b, f: _detectors(spec, attacks, m, b, f), (model, batch, fit[: spec.fit_size])))
    return units


def _detectors(spec: DefensesSpec, attacks, model, batch, fit) -> dict[str, Any]:
    """Each detector fitted on train images, then PGD plain vs PGD that also lowers the detector's score."""
    from ..defend.detector_attack import detector_attack
    from ..detect import make

    dev = model.device
    x, y = batch.x.to(dev), batch.y.to(dev)
    params = attacks.get("pgd", DEFAULT_ATTACKS["pgd"])
    plain = attack(model, x, y, "pgd", seed=spec.seed, **params)
    rows = []
    for cfg in spec.detectors:
        det = make(cfg["kind"], **{k: v for k, v in cfg.items() if k not in ("kind", "weight")})
        if cfg["kind"] == "ensemble":
            det.fit(model, fit.x.to(dev), x_adv=None)
        else:
            det.fit(model, fit.x.to(dev))
        aware = detector_attack(model, det, x, y, weight=float(cfg.get("weight", 1.0)), eps=params["eps"],
                                alpha=params.get("alpha"), steps=params.get("steps", 20), seed=spec.seed)
        for mode, res in (("plain", plain), ("detector-aware", aware)):
            flagged = det.predict(res.x_adv).cpu()
            rows.append({"model": model.name, "detector": cfg["kind"], "mode": mode, "fooled": res.success_rate,
                         "flagged": float(flagged.float().mean()),
                         "fooled_and_missed": float((res.success.cpu() & ~flagged).float().mean()),
                         "clean_flagged": float(det.predict(x).float().mean())})
    return {"results": pd.DataFrame(rows[:0]), "detectors": pd.DataFrame(rows)}


def _defended(spec: DefensesSpec, model, cfg: dict[str, Any], data: str):
    kind, params = cfg["kind"], {k: v for k, v in cfg.items() if k not in ("kind", "attacks")}
    if kind == "none":
        return model, {}
    if kind in TRANSFORMS:
        return wrap(model, kind, seed=spec.seed, **params), {}
    fn, fixed = TRAINED[kind]
    trained, info = fn(model, data, seed=spec.seed, **{**fixed, **params})
    return trained, {"train_s": info["seconds"], "n_adversarial": info.get("n_adversarial")}


def _gradcam(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The defended model's Grad-CAM ``[N,H,W]`` of class ``y`` at its CAM layer (else its last layer)."""
    layer = model.cam_layer or list(model.layers)[-1]
    return explain(model, x, "gradcam", layers=[layer], target=y)[layer]


def _shift(model, clean_maps: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kendall τ and cosine ``[N]`` between the clean maps (computed once) and the maps of ``x_adv``."""
    b = _gradcam(model, x_adv, y)
    return kendall_tau(clean_maps, b).cpu(), cosine(clean_maps, b).cpu()


def _run(spec: DefensesSpec, attacks, model, batch, cfg, entry, memo) -> dict[str, Any]:
    dev = model.device
    x, y = batch.x.to(dev), batch.y.to(dev)
    start = time.perf_counter()
    defended, info = _defended(spec, model, cfg, entry["data"])
    kind = cfg["kind"]
    transform = kind in TRANSFORMS
    eot = int(spec.attack.get("eot", 8))
    rows, names = [], list(batch.names)
    clean_acc = float((defended.predict(x) == y).float().mean())
    clean_maps = _gradcam(defended, x, y)
    for name in cfg.get("attacks", list(attacks)):
        if name not in attacks:
            raise unknown_name(f"attack of defense {kind!r}", name, attacks)
        params, n = attacks[name], min(len(x), int(spec.attack.get(f"{name}_limit", len(x))))
        xs, ys = x[:n], y[:n]
        modes = {}
        if kind != "none":
            if name not in memo:
                made = attack(model, xs, ys, name, seed=spec.seed, **params)
                memo[name] = (made.x_adv, made.success)
            modes["transfer"] = (memo[name][0][:n], memo[name][1][:n])
        made = attack(defended, xs, ys, name, seed=spec.seed, **params)
        modes["plain"] = (made.x_adv, made.success)
        view = defended.adaptive(eot) if transform else defended
        if name in GRADIENT_ATTACKS and view is not defended:
            made = attack(view, xs, ys, name, seed=spec.seed, **params)
            modes["adaptive"] = (made.x_adv, made.success)
        for mode, (x_adv, success) in modes.items():
            pred = defended.predict(x_adv)
            tau, cos = _shift(defended, clean_maps[:n], x_adv, ys)
            rows.append(pd.DataFrame({"image": names[:n], "attack": name, "mode": mode, "correct": (pred == ys).cpu(),
                                      "adv_success": success.cpu(), "tau": tau.numpy(), "cosine": cos.numpy()}))
    out = {"results": pd.concat(rows, ignore_index=True).assign(model=model.name, defense=_label(cfg), kind=kind,
                                                                clean_accuracy=clean_acc, clean_images=len(x)),
           "defenses": pd.DataFrame([{"model": model.name, "defense": _label(cfg), "kind": kind,
                                      "clean_accuracy": clean_acc, "seconds": time.perf_counter() - start, **info}])}
    if kind == "none" or kind in TRAINED:
        out["sweep"] = _sweep(spec, defended, x, y, clean_maps).assign(model=model.name, defense=_label(cfg))
    return out


#: seed 004 Table VI's ε columns (besides 0, the clean accuracy)
PAPER_SWEEP = [2 / 255, 4 / 255, 6 / 255, 8 / 255, 9 / 255, 10 / 255]
#: ``attack["sweep_form"]`` -> (interpreter, attack whose τ is reported)
SWEEP_FORMS = {"paper": ("cam", "interpretation PGD (max D)"), "pgd_gradcam": ("gradcam", "PGD (cross-entropy)")}


def _cam(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CAM ``[N,H,W]`` of class ``y`` (seed 004 Table VI's interpreter)."""
    (m,) = explain(model, x, "cam", target=y).values()
    return m


def _sweep(spec: DefensesSpec, model, x: torch.Tensor, y: torch.Tensor, clean_maps: torch.Tensor) -> pd.DataFrame:
    """Seed 004 Table VI (Sec. VI-B): per ε, accuracy under L∞ PGD (cross-entropy) and Kendall τ between the
    clean and adversarial maps under the attack against interpretability.

    ``attack["sweep_form"]``: ``paper`` (default) — τ of the **CAM** maps (true class) of ``x`` and of the
    PGD example that maximizes the interpretation difference ``D`` (:func:`~advlens.defend.recipes.
    worst_case_example`, the attack of the robust training); ``pgd_gradcam`` — τ of Grad-CAM at the PGD
    cross-entropy example (the earlier advlens form). A model without a CAM head (``cam_layer`` and
    ``classifier``) gets ``pgd_gradcam``; the row's ``form`` says which was run. Both attacks: ``sweep_steps``
    (10) steps of 2.5·ε/steps, ``spec.seed``.
    """
    form = spec.attack.get("sweep_form", "paper")
    if form not in SWEEP_FORMS:
        raise unknown_name("sweep_form", form, SWEEP_FORMS)
    if getattr(model, "classifier", None) is None or getattr(model, "cam_layer", None) is None:
        form = "pgd_gradcam"
    rows = []
    steps = int(spec.attack.get("sweep_steps", 10))
    cam0 = _cam(model, x, y) if form == "paper" else clean_maps
    for eps in spec.attack.get("sweep", PAPER_SWEEP):
        alpha = 2.5 * eps / steps
        x_adv = attack(model, x, y, "pgd", eps=eps, alpha=alpha, steps=steps, seed=spec.seed).x_adv
        if form == "paper":
            x_int = worst_case_example(model, x, y, eps, alpha, steps, spec.seed)
            tau = kendall_tau(cam0, _cam(model, x_int, y)).cpu()
        else:
            tau, _ = _shift(model, clean_maps, x_adv, y)
        rows.append({"eps": float(eps), "accuracy": float((model.predict(x_adv) == y).float().mean()),
                     "tau": float(tau.nanmean()), "form": form,  # NaN: a constant (vanished) map
                     "interpreter": SWEEP_FORMS[form][0]})
    return pd.DataFrame(rows)


def _label(cfg: dict[str, Any]) -> str:
    params = ",".join(f"{k}={v}" for k, v in cfg.items() if k not in ("kind", "attacks"))
    return cfg["kind"] + (f"({params})" if params else "")
