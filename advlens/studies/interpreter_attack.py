"""Seed 004 (Abdukhamidov et al.): attacks on classifier + interpreter, and their transfer across interpreters.

For every model, base attack framework (PGD, C&W, StAdv) and interpreter ``g`` (Grad, CAM, MASK,
RTS by default), the study runs the plain base attack and ADV², AdvEdge, AdvEdge⁺ against ``g``,
targeted at ``y_t = (y + randint(1, C)) mod C`` (REFERENCE.md), and records per image:

* attack success and misclassification confidence (seed 004 Sec. V-B), time per image (Table I);
* the L1 distance and the IoU (top-k binarized) between the benign map ``m_t`` and the adversarial
  map (the map of the adversarial image for its prediction) under ``g`` (Fig. 4) and under every
  other interpreter ``g'`` (transferability, Table II);
* the noise rate 1 − SSIM of the images (Fig. 5) and the L∞ size of the perturbation.

``m_t`` is the benign map of the true class (of ``y_t`` for RTS, as the paper's code).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from .. import metrics as M
from .._checks import AdvlensError, unknown_name
from .._rng import random_other_class
from ..attacks import attack
from ..attacks.interpretation import BASES, INTERPRETERS
from ..explain import explain
from ..report import Section, bar_plot, map_grid, write_report
from ._common import safe_name, units_per_chunk
from ._examples import example_key, example_tree
from .runner import Unit
from .spec import Explainers, StudySpec, register_study

__all__ = ["InterpreterAttackSpec", "plan", "report", "derived", "attack_table", "transfer_table"]


class InterpreterAttackSpec(StudySpec):
    """Settings of the interpreter-attack study (seed 004).

    Attributes:
        explainers: the interpreters attacked and evaluated (``grad``, ``cam``, ``gradcam``, ``mask``, ``rts``…).
        attack: also reads ``bases`` (``pgd``/``cw``/``stadv``), ``variants`` (``adv2``/``advedge``/``advedge+``)
            and ``targeted``.
    """

    study: Literal["interpreter_attack"] = "interpreter_attack"
    explainers: Explainers


# Seed 004 (Abdukhamidov et al.): ADV², AdvEdge, AdvEdge⁺ over PGD against Grad, CAM, MASK and RTS,
# eps 0.031, alpha 1/255, 300 iterations, random target classes; C&W and StAdv via "bases".
register_study("interpreter_attack", InterpreterAttackSpec, presets={"seed004": {
    "models": [{"model": "small_vgg_shapes", "data": "shapes", "split": "test", "n": 2500}],
    "attack": {"method": "advedge", "bases": ["pgd"], "variants": ["adv2", "advedge", "advedge+"],
               "targeted": True, "eps": 0.031, "alpha": 1 / 255, "steps": 300, "mask_steps": 100},
    "explainers": ["grad", "cam", "mask", "rts"], "limit": 32,
}})

VARIANTS = ("adv2", "advedge", "advedge+")
#: attack parameters each base framework takes from ``spec.attack`` (the rest are shared)
_BASE_KEYS = {"pgd": ("eps", "alpha"), "cw": ("c", "kappa", "lr", "binary_search_steps"),
              "stadv": ("kappa", "lr", "flow_tau")}
_SHARED_KEYS = ("steps",)
_VARIANT_KEYS = ("lam", "phi", "smooth_tau", "mask_steps")


def _settings(spec: InterpreterAttackSpec) -> dict[str, Any]:
    a = dict(spec.attack)
    bases, variants = a.pop("bases", ["pgd"]), a.pop("variants", list(VARIANTS))
    a.pop("method", None)
    targeted = bool(a.pop("targeted", True))
    for b in bases:
        if b not in BASES:
            raise unknown_name("base attack", b, BASES)
    for v in variants:
        if v not in VARIANTS:
            raise unknown_name("interpretation attack", v, VARIANTS)
    for g in spec.explainers:
        if g not in INTERPRETERS:
            raise unknown_name("interpreter", g, INTERPRETERS)
    known = {k for ks in _BASE_KEYS.values() for k in ks} | set(_SHARED_KEYS) | set(_VARIANT_KEYS)
    bad = sorted(set(a) - known)
    if bad:
        raise AdvlensError(f"unknown attack parameter(s) {bad} for the interpreter_attack study (known: {sorted(known)})")
    return {"bases": bases, "variants": variants, "targeted": targeted, "params": a}


def plan(spec: InterpreterAttackSpec) -> list[Unit]:
    """One unit per model × chunk of ``batch_size`` images."""
    settings = _settings(spec)
    return units_per_chunk(spec, lambda m, b, sl, i, e: _run(spec, settings, m, b, sl, i, e))


def _maps(model, x: torch.Tensor, interpreter: str, cls: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    kw = {"steps": params["mask_steps"]} if interpreter == "mask" and "mask_steps" in params else {}
    (m,) = explain(model, x, interpreter, target=cls, **kw).values()
    return m


def _attack_kwargs(base: str, variant: str | None, params: dict[str, Any]) -> dict[str, Any]:
    keys = _BASE_KEYS[base] + _SHARED_KEYS + (_VARIANT_KEYS if variant else ())
    kw = {k: params[k] for k in keys if k in params}
    if variant is None:  # the plain base attack: same budget, no interpretation term, no random start
        kw = {("tau" if k == "flow_tau" else k): v for k, v in kw.items()}
        if base == "pgd":
            kw.update(random_start=False, eps=kw.get("eps", 0.031), alpha=kw.get("alpha", 1 / 255),
                      steps=kw.get("steps", 300))
    else:
        kw["base"] = base
    return kw


def _run(spec: InterpreterAttackSpec, settings: dict[str, Any], model, batch, sl, i: int, entry: dict[str, Any]) -> dict[str, Any]:
    x = batch.x[sl].to(model.device)
    names, n = batch.names[sl], len(x)
    with torch.no_grad():
        pred0 = model(x).argmax(1)
    y = pred0.clone()
    if batch.y is not None:
        known = batch.y[sl].to(x.device) >= 0
        y[known] = batch.y[sl].to(x.device)[known]
    c = len(model.labels)
    t = None
    if settings["targeted"]:  # seed 004's y_t = (y + randint(1, C)) mod C, drawn per image (batch-independent)
        t = random_other_class(x, y, c, spec.seed)
    interps, params = spec.explainers, settings["params"]
    ref = {g: _maps(model, x, g, t if (g == "rts" and t is not None) else y, params) for g in interps}
    base_cols = {"model": model.name, "data": entry["data"], "image": list(names), "label": y.cpu().numpy(),
                 "target": (t if t is not None else y).cpu().numpy()}
    rows, examples = [], {}
    for base in settings["bases"]:
        runs = [(None, "none")] + [(v, g) for v in settings["variants"] for g in interps]
        for variant, attacked in runs:
            kw = _attack_kwargs(base, variant, params)
            if variant is not None:
                kw["interpreter"] = attacked
            res = attack(model, x, y, variant or base, seed=spec.seed, target=t, **kw)
            name = variant or "plain"
            common = {**base_cols, "base": base, "attack": name, "attacked": attacked,
                      "success": res.success.cpu().numpy(), "confidence": res.confidence.cpu().numpy(),
                      "noise_rate": M.noise_rate(x, res.x_adv).cpu().numpy(),
                      "linf": (res.x_adv - x).flatten(1).abs().amax(1).cpu().numpy(), "time_s": res.time_s / n}
            for g in interps:
                adv_map = _maps(model, res.x_adv, g, res.pred, params)
                rows.append(pd.DataFrame({**common, "evaluated": g, "l1": M.l1(ref[g], adv_map).cpu().numpy(),
                                          "iou": M.iou(ref[g], adv_map).cpu().numpy()}))
                if i == 0 and spec.examples and base == settings["bases"][0] and (variant is None or g == attacked):
                    examples[(name, g, "map")] = adv_map[0].half()
                    examples[(name, g, "image")] = res.x_adv[0].clone()
    if i == 0 and spec.examples:
        examples.update({("clean", g, "map"): ref[g][0].half() for g in interps})
        examples.update({("clean", g, "image"): x[0].clone() for g in interps})
    out: dict[str, Any] = {"results": pd.concat(rows, ignore_index=True)}
    if examples:
        out["examples"] = {example_key(model.name, *k): v for k, v in examples.items()}
    return out


def attack_table(results: pd.DataFrame) -> pd.DataFrame:
    """Seed 004's per attack × interpreter table: success rate, misclassification confidence (mc),
    L1 and IoU of the maps under the attacked interpreter (for the plain attack: under each
    interpreter), noise rate 1 − SSIM and seconds per image. mc, L1, IoU and noise rate are means
    over the successful images (a failed image keeps its benign map, which would flatter L1)."""
    own = results[(results.attacked == results.evaluated) | (results.attacked == "none")]
    keys = ["model", "base", "attack", "evaluated"]
    table = own.groupby(keys, sort=False).agg(images=("image", "count"), success_rate=("success", "mean"),
                                              time_s=("time_s", "mean"))
    ok = own[own.success.astype(bool)].groupby(keys, sort=False).agg(
        mc=("confidence", "mean"), l1=("l1", "mean"), iou=("iou", "mean"), noise_rate=("noise_rate", "mean"))
    return table.join(ok).reset_index().rename(columns={"evaluated": "interpreter"})


def transfer_table(results: pd.DataFrame) -> pd.DataFrame:
    """Seed 004 Table II: mean L1 between benign and adversarial maps of the successful images, rows =
    the interpreter the attack targeted (source), columns = the interpreter the maps are computed with."""
    r = results[(results.attacked != "none") & results.success.astype(bool)]
    return (r.pivot_table(index=["model", "base", "attack", "attacked"], columns="evaluated", values="l1",
                          aggfunc="mean", sort=False).reset_index())


def derived(meta: dict, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every number the report shows: ``attack_interpreter`` (:func:`attack_table`: success rate, mc, L1, IoU,
    noise rate, seconds per image) and ``transfer_l1`` (:func:`transfer_table`, seed 004 Table II)."""
    res = tables["results"]
    return {"attack_interpreter": attack_table(res), "transfer_l1": transfer_table(res)}


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    """``report.html`` (and ``figures/``) in ``out``: every number from the :func:`derived` tables (computed
    here if absent), the spec and the versions the run recorded."""
    spec = meta["spec"]
    figs = out / "figures"
    have = tables if "attack_interpreter" in tables and "transfer_l1" in tables else derived(meta, tables)
    table, transfer = have["attack_interpreter"], have["transfer_l1"]
    plot = table.assign(label=lambda d: d.model + " · " + d.base + " · " + d.interpreter)
    f_l1 = bar_plot(figs / "l1_per_interpreter.png", plot, x="label", y="l1", hue="attack",
                    title="L1 between benign and adversarial maps (lower = stealthier)", errorbars=False)
    f_iou = bar_plot(figs / "iou_per_interpreter.png", plot, x="label", y="iou", hue="attack",
                     title="IoU of top-10 % map pixels, benign vs adversarial (higher = stealthier)", errorbars=False)
    f_noise = bar_plot(figs / "noise_rate.png", plot, x="label", y="noise_rate", hue="attack",
                       title="noise rate 1 − SSIM of the adversarial images", errorbars=False)
    f_asr = bar_plot(figs / "success_rate.png", plot, x="label", y="success_rate", hue="attack",
                     title="attack success rate", errorbars=False)
    sections = [
        Section("Attack × interpreter", "Seed 004 Fig. 4–5 and Table I measured here: success rate, "
                "misclassification confidence (mc), L1 / IoU of benign vs adversarial maps under the attacked "
                "interpreter, noise rate (means over successful images) and seconds per image. 'plain' = the base "
                "attack alone, same budget.",
                [f_asr, f_l1, f_iou, f_noise], [table]),
        Section("Transferability across interpreters", "Seed 004 Table II: mean L1 (benign vs adversarial map) "
                "when the adversarial image made against the row's interpreter is explained by the column's.",
                [], [transfer]),
    ]
    grids = _grids(figs, examples)
    if grids:
        sections.append(Section("Maps", "First image: benign and adversarial maps per interpreter "
                                "(rows: the attack; each column's adversarial image targets that interpreter).", grids))
    return write_report(out / "report.html", "advlens study: interpreter_attack (seed 004)", sections,
                        spec, meta.get("versions", {}))


def _grids(figs: Path, examples: dict[str, torch.Tensor]) -> list[Path]:
    paths = []
    for model_name, by_cond in example_tree(examples).items():
        conds = [c for c in ("clean", "plain", *VARIANTS) if c in by_cond]
        interps = list(dict.fromkeys(g for c in conds for g in by_cond[c]))
        rows = {c: by_cond[c][interps[-1]]["image"][None].float() for c in conds}
        maps = {c: {g: by_cond[c][g]["map"][None].float() for g in interps} for c in conds}
        paths.append(map_grid(figs / f"grid_{safe_name(model_name)}.png", rows, maps, interps, title=model_name))
    return paths
