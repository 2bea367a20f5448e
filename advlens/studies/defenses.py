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
from ..data import load_images
from ..defend import TRANSFORMS, wrap
from ..defend.recipes import adversarial_train, retrain, worst_case_example
from ..explain import explain
from ..metrics import cosine, kendall_tau
from ._common import entries_on_test_split, load_entry, safe_name
from .runner import Unit
from .spec import FitSize, KindTables, StudySpec, register_study

__all__ = ["DefensesSpec", "plan", "report", "derived", "TRAINED", "GRADIENT_ATTACKS", "table1", "accuracy_table",
           "table6", "SWEEP_FORMS", "PAPER_SWEEP"]


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
               "pgd": {"eps": 0.031, "alpha": 0.031 / 8, "steps": 20},
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
TRAINED = {
    "retrain-fgsm": (retrain, {"method": "fgsm"}),
    "retrain-onepixel": (retrain, {"method": "onepixel"}),
    "pgd_at": (adversarial_train, {}),
    "robust": (adversarial_train, {"gamma": 2.0}),
}
GRADIENT_ATTACKS = ("fgsm", "pgd")
DEFAULT_ATTACKS = {"fgsm": {"eps": 0.1}, "pgd": {"eps": 0.031, "alpha": 0.031 / 8, "steps": 20},
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


def _short_labels(res: pd.DataFrame) -> pd.Series:
    """Figure labels: a trained defense by its kind alone (its budget parameters are in the tables) unless
    two defenses of one model share the kind."""
    short = res.defense.where(~res.kind.isin(list(TRAINED)), res.kind)
    clash = (res.assign(s=short).groupby(["model", "s"]).defense.transform("nunique") > 1)
    return short.where(~clash, res.defense)


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per model × defense × attack: clean accuracy and accuracy / mean τ per mode (transfer, plain, adaptive)."""
    g = results.groupby(["model", "defense", "kind", "attack", "mode"], sort=False)
    long = g.agg(accuracy=("correct", "mean"), tau=("tau", "mean"), clean=("clean_accuracy", "first")).reset_index()
    wide = long.pivot_table(index=["model", "defense", "kind", "attack", "clean"], columns="mode",
                            values=["accuracy", "tau"], sort=False)
    order = [(v, m) for v in ("accuracy", "tau") for m in ("transfer", "plain", "adaptive") if (v, m) in wide.columns]
    wide = wide[order]
    wide.columns = [f"{v}_{m}" for v, m in order]
    return wide.reset_index().rename(columns={"clean": "clean_accuracy"})


def table1(results: pd.DataFrame) -> pd.DataFrame:
    """Seed 001 Table 1 for the clean model and the retrained ("immune") models.

    ``clear_test`` = the model's clean accuracy; ``clear+fgsm_test`` / ``clear+OP_test`` = its accuracy on the
    paper's extended test set: the clean test images plus only the *successful* adversarial images made
    against the clean model (seed 001, Sec. IV: "clear+FGSM_test" = 2,000 clean + 940 successful = 2,940
    images; 85.80 % of 2,000 correct over 2,940 = Table 1's 58.37 %), i.e.
    ``(clean_accuracy · n_clean + Σ_successful correct) / (n_clean + n_successful)``. The clean model's
    adversarial part is its ``plain`` rows, a retrained model's its ``transfer`` rows (the same fixed
    images); "successful" = the attack fooled the clean model (``adv_success``). Part sizes are the columns
    ``clear_images``, ``fgsm_successful`` and ``OP_successful``. (Results written before ``adv_success`` /
    ``clean_images`` existed fall back on the clean model's plain rows and the number of distinct images.)
    """
    rows = []
    plain_none = results[(results.kind == "none") & (results["mode"] == "plain")]
    for (model, defense, kind), g in results.groupby(["model", "defense", "kind"], sort=False):
        if kind not in ("none", "retrain-fgsm", "retrain-onepixel"):
            continue
        acc = float(g.clean_accuracy.iloc[0])
        n_clean = int(g.clean_images.iloc[0]) if "clean_images" in g and pd.notna(g.clean_images.iloc[0]) \
            else g.image.nunique()
        row = {"model": model, "defense": defense, "clear_test": acc, "clear_images": n_clean}
        for a, col, size in (("fgsm", "clear+fgsm_test", "fgsm_successful"),
                             ("onepixel", "clear+OP_test", "OP_successful")):
            sel = g[(g.attack == a) & (g["mode"] == ("plain" if kind == "none" else "transfer"))]
            if not len(sel):
                continue
            if "adv_success" in sel and sel.adv_success.notna().all():
                ok = sel.adv_success.astype(bool).to_numpy()
            else:  # older results: fooled the clean model = wrong under its plain attack (same images)
                fooled = ~plain_none[(plain_none.model == model) & (plain_none.attack == a)].set_index("image").correct
                ok = sel.image.map(fooled.astype(bool)).fillna(False).astype(bool).to_numpy()
            n_ok = int(ok.sum())
            row[size] = n_ok
            row[col] = (round(acc * n_clean) + int(sel.correct.to_numpy()[ok].sum())) / (n_clean + n_ok)
        rows.append(row)
    return pd.DataFrame(rows)


def table6(sweep: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Seed 004 Table VI: per model × defense, a row ``accuracy`` (ε = 0: clean accuracy) and a row ``tau``
    with one column per ε (``"2/255"``…), from the sweep rows and the clean accuracies."""
    sw = sweep.assign(eps=sweep.eps.map(lambda e: f"{e * 255:.0f}/255"))
    kinds = results.drop_duplicates("defense").set_index("defense").kind
    clean = results.drop_duplicates(["model", "defense"]).set_index(["model", "defense"]).clean_accuracy
    parts = []
    for value in ("accuracy", "tau"):
        wide = sw.pivot_table(index=["model", "defense"], columns="eps", values=value, sort=False)
        wide.columns = list(wide.columns)
        if value == "accuracy":
            wide.insert(0, "0", [clean.get(k, float("nan")) for k in wide.index])
        parts.append(wide.reset_index().assign(value=value))
    out = pd.concat(parts, ignore_index=True)
    out.insert(2, "kind", out.defense.map(kinds))
    if "form" in sweep:
        forms = sweep.drop_duplicates(["model", "defense"]).set_index(["model", "defense"]).form
        out["form"] = [forms.get((m, d)) for m, d in zip(out.model, out.defense)]
    return out


def detection_rates(detectors: pd.DataFrame) -> pd.DataFrame:
    """Per model × detector × attack mode: the means of ``fooled``, ``flagged``, ``fooled_and_missed`` and
    ``clean_flagged`` (one row per mode and detector in a run; means over runs otherwise)."""
    cols = ["fooled", "flagged", "fooled_and_missed", "clean_flagged"]
    return detectors.groupby(["model", "detector", "mode"], sort=False)[cols].mean().reset_index()


def derived(meta: dict, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every number the report shows: ``defense_accuracy`` (:func:`accuracy_table`), ``defense_runs`` (clean
    accuracy and cost of each defended model), ``seed001_table1`` (:func:`table1`), ``seed004_table6``
    (:func:`table6`) and ``detection_rates`` (:func:`detection_rates`) when the study has them."""
    res = tables["results"]
    out = {"defense_accuracy": accuracy_table(res), "defense_runs": tables["defenses"].reset_index(drop=True)}
    t1 = table1(res)
    if len(t1):
        out["seed001_table1"] = t1
    if "sweep" in tables and len(tables["sweep"]):
        out["seed004_table6"] = table6(tables["sweep"], res)
    if "detectors" in tables and len(tables["detectors"]):
        out["detection_rates"] = detection_rates(tables["detectors"])
    return out


def _accuracy_long(acc: pd.DataFrame, attacks: list[str]) -> pd.DataFrame:
    """:func:`accuracy_table` as one row per model × defense × (attack · mode), for the bar plots."""
    modes = [m for m in ("transfer", "plain", "adaptive") if f"accuracy_{m}" in acc]
    long = acc.melt(id_vars=["model", "defense", "kind", "attack"],
                    value_vars=[f"{v}_{m}" for v in ("accuracy", "tau") for m in modes], var_name="col")
    long[["value_name", "mode"]] = long.col.str.split("_", n=1, expand=True)
    wide = long.pivot_table(index=["model", "defense", "kind", "attack", "mode"], columns="value_name",
                            values="value", sort=False).reset_index()
    order = [f"{a} · {m}" for a in attacks for m in ("transfer", "plain", "adaptive")]
    return wide.assign(group=pd.Categorical(wide.attack + " · " + wide["mode"], categories=order),
                       defense=_short_labels(wide))


def report(out, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]):
    from ..report import Section, bar_plot, heatmap_plot, write_report

    figs = out / "figures"
    res = tables["results"]
    have = tables if "defense_accuracy" in tables else {**tables, **derived(meta, tables)}
    acc = have["defense_accuracy"]
    long = _accuracy_long(acc, list(pd.unique(res.attack)))
    f_acc = [heatmap_plot(figs / f"accuracy_{safe_name(m)}.png", g, row="defense", col="group", value="accuracy",
                          title=f"{m}: accuracy of the defended model under attack")
             for m, g in long.groupby("model", sort=False)]
    f_tau = [heatmap_plot(figs / f"tau_{safe_name(m)}.png", g, row="defense", col="group", value="tau", vmin=-1,
                          title=f"{m}: explanation shift (Kendall τ, clean vs adversarial Grad-CAM)")
             for m, g in long.groupby("model", sort=False)]
    sections = [
        Section("Accuracy and explanation shift per defense × attack",
                "Accuracy of each defended model on clean test images and under each attack: 'transfer' = examples "
                "made against the undefended model, 'plain' = the attack run on the defended model as it is, "
                "'adaptive' = BPDA (non-differentiable transforms) or EOT (random transforms). τ is the Kendall rank "
                "correlation of the defended model's Grad-CAM of clean and adversarial input (1 = unchanged).",
                [*f_acc, *f_tau], [acc, have["defense_runs"]]),
    ]
    if "seed001_table1" in have:
        sections.append(Section("Seed 001 Table 1", "Accuracy on the clean test set and on the paper's extended test "
                                "set: the clean images plus the adversarial images (made against the clean model) "
                                "that fooled it, part sizes in 'clear_images' / '…_successful', for the clean and the "
                                "retrained ('immune') models. Paper (cats/dogs): 85.80 / 58.37 / 64.62; FGSM immune "
                                "84.15; one-pixel immune 86.09 %.", [], [have["seed001_table1"]]))
    if "seed004_table6" in have:
        t6 = have["seed004_table6"]
        t6 = t6.assign(defense=_short_labels(t6))
        eps_cols = [c for c in t6.columns if c.endswith("/255")]
        f_sw = [bar_plot(figs / f"sweep_{v}_{safe_name(m)}.png",
                         g.melt(id_vars=["defense"], value_vars=eps_cols, var_name="eps", value_name=v),
                         x="eps", y=v, hue="defense", title=f"{m}: {v} by ε (seed 004 Table VI)", errorbars=False)
                for (m, v), g in t6.groupby(["model", "value"], sort=False)]
        paper = "form" in t6 and (t6.form == "paper").all()
        how = ("τ of the CAM maps (true class), clean vs the PGD example that maximizes the interpretation "
               "difference (the paper's attack against interpretability)") if paper else \
            "τ of Grad-CAM, clean vs the PGD (cross-entropy) example"
        sections.append(Section("Seed 004 Table VI", "Per ε: accuracy under PGD (ε = 0: clean) and " + how + ", for "
                                "the normally trained model and the adversarially / interpretation-robustly trained "
                                "ones (column 'form' per row). Paper (Wide-ResNet, CIFAR-10): NT τ 0.542 → −0.183, "
                                "AT τ 0.870 → 0.676 from 2/255 to 10/255.", f_sw, [t6]))
    if "detection_rates" in have:
        sections.append(Section("Detectors under a detector-aware attack", "Each detector's detection rate and the "
                                "attack's success under plain PGD and under PGD that also lowers the detector's "
                                "score (C&W-style adaptive attack); 'fooled_and_missed' = the attack fools the model "
                                "and the detector does not flag it.", [], [have["detection_rates"]]))
    return write_report(out / "report.html", "advlens study: defenses (seeds 001, 002, 004)", sections,
                        meta["spec"], meta.get("versions", {}))
