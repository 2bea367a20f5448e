"""The defenses study's tables and report (see :mod:`advlens.studies.defenses` for what it runs).

Every number the report shows is one of :func:`derived`'s tables: accuracy and explanation shift per
defense × attack × mode (:func:`accuracy_table`), seed 001 Table 1 (:func:`table1`), seed 004 Table VI
(:func:`table6`) and the detectors' rates under a detector-aware attack (:func:`detection_rates`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ..defend import TRANSFORMS
from ._common import safe_name

__all__ = ["accuracy_table", "table1", "table6", "detection_rates", "derived", "report"]


def _short_labels(res: pd.DataFrame) -> pd.Series:
    """Figure labels: a trained defense by its kind alone (its budget parameters are in the tables) unless
    two defenses of one model share the kind."""
    trained = ~res.kind.isin(["none", *TRANSFORMS])
    short = res.defense.where(~trained, res.kind)
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


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    """``report.html`` (and ``figures/``) in ``out``: every number from the :func:`derived` tables (computed
    here if absent), the spec and the versions the run recorded."""
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
