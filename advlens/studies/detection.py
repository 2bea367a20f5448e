"""Seeds 002 and 004: detecting adversarial inputs from explanations, against perturbation strength.

Per model entry: the detectors of ``spec.detectors`` (``behavior``, ``noisecam``, ``ensemble``; see
:mod:`advlens.detect`) are fitted on ``fit_size`` images of the *train* split and scored on the
entry's *test* images — never on what they were fitted on. The test images are attacked once
(``spec.attack``); each strength s of ``spec.strengths`` (seed 002: 25 %–400 %) gives the inputs
``x + s·(x_adv − x)`` and matched Gaussian noise of the same statistics (seed 002 eq. 2). Every
detector scores clean, adversarial and noise inputs → TPR, TNR (clean, noise), accuracy and ROC-AUC
per strength. The model's accuracy with and without Gaussian-blur preprocessing (radius 1.5, seed 002
Fig. 1) is recorded beside. An ``ensemble`` entry with ``sets = true`` is also fitted for every 1-, 2-
and 3-interpreter subset of its ``interpreters`` (seed 004 Tables IV–V), on maps computed once.

An ``ensemble`` entry's ``train`` key says where its adversarial training images come from:
``"interpretation"`` (default, seed 004's setting) calls ``fit(model, x_fit)`` so the detector makes its own
interpretation-aware adversarials; ``"attack"`` (the former advlens form) fits on the successes of the spec's
``attack`` on the fit images. Every other key is a parameter of :class:`~advlens.detect.EnsembleDetector`.

:func:`derived` turns the scored rows into the tables the report shows: ``detection_rates`` (TPR / TNR / AUC
per model × detector × strength), ``roc_curves``, ``blur_accuracy``, ``detector_cost`` and
``interpreter_sets``.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from .._checks import AdvlensError, check_choice
from ..attacks import attack, matched_noise
from ..attacks.pgd import EVAL_PGD
from ..data import load_images
from ..detect import EnsembleDetector, interpreter_maps, make
from ._common import entries_on_test_split, load_entry, safe_name
from .runner import Unit
from .spec import FitSize, KindTables, Strengths, StudySpec, register_study

__all__ = ["DetectionSpec", "plan", "derived", "report", "detection_table", "blur_table", "roc_table", "strength_inputs",
           "detector_label", "DEFAULT_DETECTORS", "BLUR_SIGMA", "TRAIN"]


class DetectionSpec(StudySpec):
    """Settings of the detection study (seeds 002 and 004).

    Attributes:
        strengths: perturbation scales of the adversarial and noise inputs scored.
        detectors: ``{kind, **params}`` tables (``behavior``, ``noisecam``, ``ensemble``; an ensemble with
            ``sets = true`` is also fitted on every interpreter subset).
        fit_size: train-split images each detector is fitted on (at least 8).
    """

    study: Literal["detection"] = "detection"
    strengths: Strengths
    detectors: KindTables
    fit_size: FitSize


# Seed 002 (Tan et al.): adversarial perturbation amplified 25 %-400 % vs matched Gaussian noise vs clean;
# behaviour deviation (per-image PCA, 50 copies, the paper's median rule), NoiseCAM + DBSCAN, and seed 004's
# interpretation ensemble trained on AdvEdge examples: every interpreter subset (Tables IV-V), and the 2-channel
# (a, b), 3-channel (a, b, a*b) and small-CNN variants of grad + cam on the same split; Gaussian-blur accuracy
# beside. PGD stands in for DLFuzz.
register_study("detection", DetectionSpec, presets={"seed002": {
    "models": [{"model": "small_vgg_digits", "data": "digits", "split": "test"},
               {"model": "small_vgg_shapes", "data": "shapes", "split": "test", "n": 2500}],
    "attack": {"method": "pgd", **EVAL_PGD},
    "strengths": [0.25, 0.5, 1.0, 2.0, 4.0],
    "detectors": [{"kind": "behavior", "copies": 50}, {"kind": "noisecam"},
                  {"kind": "ensemble", "interpreters": ["grad", "cam", "mask"], "backbone": "pixels",
                   "options": {"mask": {"steps": 100}}, "sets": True},
                  {"kind": "ensemble", "interpreters": ["grad", "cam"], "channels": "abc"},
                  {"kind": "ensemble", "interpreters": ["grad", "cam"], "backbone": "cnn"}],
    "limit": 64, "fit_size": 300, "batch_size": 64,
}})

#: detectors of a spec that lists none
DEFAULT_DETECTORS = [{"kind": "behavior"}, {"kind": "noisecam"}, {"kind": "ensemble"}]
#: seed 002 Fig. 1: Gaussian blur of radius 1.5 (PIL's radius is the standard deviation)
BLUR_SIGMA = 1.5
#: where an ensemble's adversarial training images come from (study-level key ``train``)
TRAIN = ("interpretation", "attack")
#: keys of a detector table that are the study's, not the detector's
_STUDY_KEYS = ("kind", "sets", "train")
#: ensemble settings named in the detector label when they differ from the default
_LABEL_KEYS = ("backbone", "channels", "train")


def _params(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _STUDY_KEYS}


def detector_label(cfg: dict[str, Any]) -> str:
    """``behavior``, ``noisecam`` or ``ensemble[grad+cam]`` — the detector column of the tables. An ensemble's
    ``backbone``, ``channels`` and ``train`` are appended when not the default: ``ensemble[grad+cam|cnn|attack]``."""
    if cfg["kind"] != "ensemble":
        return cfg["kind"]
    default = EnsembleDetector()
    defaults = {k: getattr(default, k, None) for k in _LABEL_KEYS} | {"train": TRAIN[0]}
    extra = [str(cfg[k]) for k in _LABEL_KEYS if k in cfg and cfg[k] != defaults[k]]
    return f"ensemble[{'+'.join(cfg.get('interpreters', default.interpreters))}{''.join('|' + e for e in extra)}]"


def _check_configs(configs: list[dict[str, Any]]) -> None:
    """Unknown kinds, parameters or ``train`` values, and two entries with one label, fail before any work."""
    labels: dict[str, int] = {}
    for i, c in enumerate(configs):
        make(c["kind"], **_params(c))
        if "train" in c:
            if c["kind"] != "ensemble":
                raise AdvlensError(f"detectors[{i}]: 'train' applies to ensemble detectors only")
            check_choice(c["train"], f"detectors[{i}].train", TRAIN)
        label = detector_label(c)
        if label in labels:
            raise AdvlensError(f"detectors[{labels[label]}] and detectors[{i}] are both {label!r}; entries of one "
                               "kind must differ in interpreters, backbone, channels or train")
        labels[label] = i


def plan(spec: DetectionSpec) -> list[Unit]:
    """One unit per model entry: fit every detector, then score every condition and strength."""
    units = []
    for mi, entry in enumerate(entries_on_test_split(spec, "scores split 'test' and fits on split 'train'")):
        model, batch = load_entry(entry, spec)
        fit = load_images(entry["data"], n=entry.get("n"), split="train", seed=spec.seed,
                          skip_bad=spec.skip_bad, **model.image_options())
        configs = [dict(c) for c in (spec.detectors or DEFAULT_DETECTORS)]
        _check_configs(configs)  # unknown kinds / parameters fail before anything is written
        units.append(Unit(f"{mi:02d}-{safe_name(model.name)}", lambda m, b, f, c=configs: _run(spec, m, b, f, c),
                          (model, batch, fit[: spec.fit_size])))
    return units


def _run(spec: DetectionSpec, model, batch, fit, configs) -> dict[str, Any]:
    import kornia

    dev = model.device
    x, y, names = batch.x.to(dev), batch.y.to(dev), batch.names
    x_fit = fit.x.to(dev)
    params = {k: v for k, v in spec.attack.items() if k != "method"}
    res = attack(model, x, y, spec.attack["method"], seed=spec.seed, **params)
    inputs = strength_inputs(x, res.x_adv, spec.strengths, spec.seed)
    images = []
    for (cond, s), xi in inputs.items():
        blurred = kornia.filters.gaussian_blur2d(xi, _blur_kernel(BLUR_SIGMA), (BLUR_SIGMA, BLUR_SIGMA),
                                                 border_type="reflect")
        images.append(pd.DataFrame({"image": names, "condition": cond, "strength": s, "label": y.cpu().numpy(),
                                    "pred": model.predict(xi).cpu().numpy(),
                                    "pred_blur": model.predict(blurred).cpu().numpy()}))
    fit_adv = None
    rows, timing, sets = [], [], []
    for cfg in configs:
        kind, label = cfg["kind"], detector_label(cfg)
        det = make(kind, **_params(cfg))
        train = cfg.get("train", TRAIN[0]) if kind == "ensemble" else None
        start = time.perf_counter()
        if train == "attack":
            fit_adv = _fit_adversarial(spec, model, x_fit) if fit_adv is None else fit_adv
            det.fit(model, x_fit, x_adv=fit_adv)
        else:
            det.fit(model, x_fit)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        for (cond, s), xi in inputs.items():
            score = det.score(xi)
            rows.append(pd.DataFrame({"image": names, "detector": label, "condition": cond, "strength": s,
                                      "score": score.double().cpu().numpy(),
                                      "flagged": (score > det.threshold).cpu().numpy()}))
        score_s = time.perf_counter() - start
        n_scored = len(x) * len(inputs)
        timing.append({"detector": label, "fit_images": len(x_fit), "fit_s": fit_s, "scored": n_scored,
                       "score_s": score_s, "images_per_s": n_scored / score_s, "threshold": det.threshold})
        if kind == "ensemble" and cfg.get("sets"):
            own = fit_adv if train == "attack" else _own_adversarials(det, x_fit)
            sets.append(_sets_table(det, _params(cfg), model, x_fit, own, inputs).assign(detector=label))
    out = {"results": pd.concat(rows, ignore_index=True).assign(model=model.name),
           "images": pd.concat(images, ignore_index=True).assign(model=model.name),
           "detectors": pd.DataFrame(timing).assign(model=model.name, attack_success=res.success_rate)}
    if sets:
        out["sets"] = pd.concat(sets, ignore_index=True).assign(model=model.name)
    return out


def strength_inputs(x: torch.Tensor, x_adv: torch.Tensor, strengths, seed: int) -> dict[tuple[str, float], torch.Tensor]:
    """``{(condition, strength): images [N,C,H,W]}`` from ``x``, ``x_adv`` ``[N,C,H,W]``: clean at 0, and per
    strength s the adversarial input
    ``x + s·(x_adv − x)`` (clamped) and matched Gaussian noise of that perturbation (seed 002 eq. 2)."""
    inputs = {("clean", 0.0): x}
    for s in strengths:
        inputs[("adversarial", s)] = (x + s * (x_adv - x)).clamp(0, 1)
        inputs[("noise", s)] = matched_noise(x, x_adv, strength=s, seed=seed)
    return inputs


def _blur_kernel(sigma: float) -> tuple[int, int]:
    k = 2 * int(round(3 * sigma)) + 1
    return (k, k)


def _fit_adversarial(spec: DetectionSpec, model, x_fit: torch.Tensor) -> torch.Tensor:
    """The ensemble's adversarial training examples: the spec's attack on the fit images (successes)."""
    params = {k: v for k, v in spec.attack.items() if k != "method"}
    res = attack(model, x_fit, None, spec.attack["method"], seed=spec.seed + 1, **params)
    return res.x_adv[res.success]


def _own_adversarials(det: EnsembleDetector, x_fit: torch.Tensor) -> torch.Tensor:
    """The adversarial images ``det.fit(model, x_fit)`` trained on, made again (their seeds are per image, so the
    same images come back) for the interpreter-set table."""
    res = det.training_attack(x_fit)
    return res.x_adv[res.success]


def _sets_table(det: EnsembleDetector, params: dict[str, Any], model, x_fit, fit_adv, inputs) -> pd.DataFrame:
    """Seed 004 Tables IV–V: every 1-, 2- and 3-subset of the ensemble's interpreters, fitted on the same
    maps; accuracy (threshold 0.5) and AUC on held-out clean vs adversarial (strength 1)."""
    from sklearn.metrics import roc_auc_score

    x_test, a_test = inputs[("clean", 0.0)], inputs.get(("adversarial", 1.0))
    if a_test is None:
        raise AdvlensError("ensemble sets are measured at strength 1.0; add 1.0 to strengths")
    pool = det.interpreters
    kw = dict(options=det.options, batch_size=det.batch_size, seed=det.seed)
    maps = {k: interpreter_maps(model, v, pool, **kw) for k, v in
            {"fit": x_fit, "fit_adv": fit_adv, "clean": x_test, "adv": a_test}.items()}
    rows = []
    for r in range(1, len(pool) + 1):
        for subset in itertools.combinations(pool, r):
            sub = EnsembleDetector(**{**params, "interpreters": list(subset)})
            sub.fit_maps(model, maps["fit"], maps["fit_adv"])
            s_clean, s_adv = sub.score_maps(maps["clean"]).cpu(), sub.score_maps(maps["adv"]).cpu()
            acc = float(torch.cat([s_clean <= 0.5, s_adv > 0.5]).float().mean())
            auc = roc_auc_score([0] * len(s_clean) + [1] * len(s_adv), torch.cat([s_clean, s_adv]).numpy())
            rows.append({"interpreters": "+".join(subset), "n_interpreters": r, "backbone": det.backbone,
                         "accuracy": acc, "auc": float(auc)})
    return pd.DataFrame(rows)


def detection_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per model × detector × strength: TPR (adversarial flagged), TNR on clean and on matched noise,
    accuracy over the three sets together, and ROC-AUC of adversarial vs clean and vs noise."""
    from sklearn.metrics import roc_auc_score

    def auc(neg: pd.Series, pos: pd.Series) -> float:
        return float(roc_auc_score([0] * len(neg) + [1] * len(pos), pd.concat([neg, pos]).to_numpy()))

    rows = []
    for (model, det), g in results.groupby(["model", "detector"], sort=False):
        clean = g[g.condition == "clean"]
        for s in sorted(g[g.condition == "adversarial"].strength.unique()):
            adv = g[(g.condition == "adversarial") & (g.strength == s)]
            noise = g[(g.condition == "noise") & (g.strength == s)]
            tp, tn_c, tn_n = adv.flagged.sum(), (~clean.flagged).sum(), (~noise.flagged).sum()
            rows.append({"model": model, "detector": det, "strength": s, "tpr": adv.flagged.mean(),
                         "tnr_clean": 1 - clean.flagged.mean(), "tnr_noise": 1 - noise.flagged.mean(),
                         "accuracy": (tp + tn_c + tn_n) / (len(adv) + len(clean) + len(noise)),
                         "auc_clean": auc(clean.score, adv.score), "auc_noise": auc(noise.score, adv.score)})
    return pd.DataFrame(rows)


def blur_table(images: pd.DataFrame) -> pd.DataFrame:
    """Classification accuracy per model × condition × strength without and with Gaussian blur."""
    ok = images.assign(accuracy=images.pred == images.label, accuracy_blur=images.pred_blur == images.label)
    return (ok.groupby(["model", "condition", "strength"], sort=False)[["accuracy", "accuracy_blur"]].mean()
            .reset_index())


def roc_table(results: pd.DataFrame) -> pd.DataFrame:
    """ROC curve points per model × detector × negative set (clean / noise) for the adversarial inputs at
    strength 1 (see :func:`advlens.report.detection.roc_curves`)."""
    from ..report.detection import roc_curves

    at1 = results[(results.strength == 1.0) | (results.condition == "clean")]
    parts = [roc_curves(g).assign(model=m) for m, g in at1.groupby("model", sort=False)
             if (g.condition == "adversarial").any()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["detector", "negative", "fpr", "tpr", "auc", "model"])


def derived(meta: dict, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every number the report shows: ``detection_rates`` (:func:`detection_table`), ``roc_curves``
    (:func:`roc_table`), ``blur_accuracy`` (:func:`blur_table`), ``detector_cost`` (fit time, throughput,
    threshold, attack success) and, when measured, ``interpreter_sets`` (seed 004 Tables IV–V)."""
    out = {"detection_rates": detection_table(tables["results"]), "roc_curves": roc_table(tables["results"]),
           "blur_accuracy": blur_table(tables["images"])}
    cost = tables["detectors"]
    out["detector_cost"] = cost[[c for c in ("model", "detector", "fit_images", "fit_s", "scored", "score_s",
                                             "images_per_s", "threshold", "attack_success") if c in cost]]
    if "sets" in tables:
        s = tables["sets"]
        if "detector" not in s:  # written before ensemble entries were labelled
            s = s.assign(detector="ensemble")
        cols = ["model", "detector", "interpreters", "n_interpreters", "backbone", "accuracy", "auc"]
        out["interpreter_sets"] = s[[c for c in cols if c in s]].reset_index(drop=True)
    return out


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    """``report.html`` (and ``figures/``) in ``out``: every number from the :func:`derived` tables (computed
    here if absent), the spec and the versions the run recorded."""
    from ..report import Section, bar_plot, write_report
    from ..report.detection import roc_plot, strength_plot

    figs = out / "figures"
    missing = [k for k in ("detection_rates", "roc_curves", "blur_accuracy", "detector_cost") if k not in tables]
    t = {**(derived(meta, tables) if missing else {}), **tables}
    table, blur, curves = t["detection_rates"], t["blur_accuracy"], t["roc_curves"]
    f_curves = [strength_plot(figs / f"strength_{safe_name(m)}.png", g, title=f"{m}: detection vs perturbation strength")
                for m, g in table.groupby("model", sort=False)]
    f_roc = [roc_plot(figs / f"roc_{safe_name(m)}.png", g, title=f"{m}: adversarial (1×) vs clean and noise")
             for m, g in curves.groupby("model", sort=False)]
    blur_long = blur.rename(columns={"accuracy": "as is", "accuracy_blur": "blurred"}).melt(
        id_vars=["model", "condition", "strength"], var_name="input", value_name="accuracy")
    blur_long = blur_long.assign(
                                 group=blur_long.model + " · " + blur_long.condition + " "
                                 + blur_long.strength.map(lambda s: f"{s:g}×"))
    f_blur = bar_plot(figs / "blur_accuracy.png", blur_long, x="group", y="accuracy", hue="input",
                      title=f"model accuracy without / with Gaussian blur (σ {BLUR_SIGMA})", errorbars=False)
    sections = [
        Section("Detection vs strength", "Seed 002 Fig. 8 measured here: per detector and strength, the true-positive "
                "rate on adversarial inputs, the true-negative rates on clean and matched-noise inputs, the accuracy "
                "over all three, and ROC-AUC of adversarial vs clean / vs noise. Detectors were fitted on train "
                "images only.", [*f_curves, *f_roc], [table]),
        Section("Detector cost", "Fit time, scoring throughput and threshold per detector.", [], [t["detector_cost"]]),
        Section("Gaussian-blur preprocessing", "Seed 002 Fig. 1: blurring removes perturbation but costs accuracy "
                "on clean inputs too.", [f_blur], [blur]),
    ]
    if "interpreter_sets" in t:
        s = t["interpreter_sets"]
        hue = s.model if s.detector.nunique() == 1 else s.model + " · " + s.detector
        f_sets = bar_plot(figs / "ensemble_sets.png", s.assign(hue=hue), x="interpreters", y="accuracy", hue="hue",
                          title="ensemble detector accuracy per interpreter set (seed 004 Tables IV–V)",
                          errorbars=False)
        sections.append(Section("Interpreter sets", "Seed 004 Tables IV–V measured here: the ensemble detector "
                                "fitted on each subset of interpreters (accuracy at 0.5, held-out clean vs "
                                "adversarial at strength 1).", [f_sets], [s]))
    return write_report(out / "report.html", "advlens study: detection (seeds 002, 004)", sections,
                        meta["spec"], meta.get("versions", {}))
