"""Seed 001 (Klawikowska et al.): FGSM and one-pixel attacks inspected through LRP, locally and globally.

Per model: the iterative FGSM of seed 001 (the smallest flipping eps per image) and the one-pixel
attack (Su et al.'s DE); LRP maps (zennit ``EpsilonPlusFlat``, iNNvestigate's "preset A flat") of
every clean and attacked image for its prediction; accuracy on the clean test set, on the attacked
set and on the clean set plus the successful adversarial images (the "Clear" columns of seed 001
Table 1); and the global view: a UMAP
(umap-learn) of the LRP signatures coloured by clean / FGSM / one-pixel (Figs. 4–6). As a number
for what the figures show, the report adds how well a 5-nearest-neighbour classifier tells the
conditions apart from the LRP signatures alone (5-fold cross-validated accuracy).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from .. import metrics as M
from .._checks import AdvlensError
from ..attacks import attack
from ..explain import explain
from ..report import Section, bar_plot, map_grid, write_report
from ..report.embedding import embedding_plot
from ._common import safe_name, units_per_chunk
from ._examples import example_key, example_tree
from .runner import Unit
from .spec import StudySpec, register_study

__all__ = ["SignaturesSpec", "plan", "report", "derived", "accuracy_table", "embed", "separability", "lrp_shift_table",
           "DERIVED"]


class SignaturesSpec(StudySpec):
    """Settings of the LRP-signature study (seed 001): ``attack`` holds sub-tables ``ifgsm``,
    ``onepixel`` and ``lrp`` of parameters.
    """

    study: Literal["signatures"] = "signatures"



# Seed 001 (Klawikowska et al.): iterative FGSM and one-pixel on trained models, LRP (preset A flat) of
# clean vs attacked images, accuracy per test set (Table 1 'Clear'), UMAP of LRP signatures (Figs. 4-6).
# One-pixel: Su et al.'s population 400 and F 0.5; 30 generations (not 100) keep a CPU run in minutes.
register_study("signatures", SignaturesSpec, presets={"seed001": {
    "models": [{"model": "small_vgg_digits", "data": "digits", "split": "test"},
               {"model": "small_vgg_lfw", "data": "lfw", "split": "test"}],
    "attack": {"method": "ifgsm+onepixel", "ifgsm": {"eps_step": 1 / 255, "max_eps": 32 / 255},
               "onepixel": {"pixels": 1, "popsize": 400, "iterations": 30}},
    "limit": 32, "batch_size": 32,
}})

_ATTACKS = {"fgsm": "ifgsm", "one-pixel": "onepixel"}
SIGNATURE_SIZE = 16  # LRP maps are average-pooled to 16×16 = 256 numbers per image


def _params(spec: SignaturesSpec) -> dict[str, dict[str, Any]]:
    """``spec.attack`` = ``{"method": "ifgsm+onepixel", "ifgsm": {...}, "onepixel": {...}}``."""
    a = dict(spec.attack)
    a.pop("method", None)
    bad = sorted(set(a) - set(_ATTACKS.values()) - {"lrp"})
    if bad:
        raise AdvlensError(f"unknown key(s) {bad} in [attack] of the signatures study (use ifgsm, onepixel, lrp tables)")
    return {k: dict(a.get(k, {})) for k in (*_ATTACKS.values(), "lrp")}


def plan(spec: SignaturesSpec) -> list[Unit]:
    """One unit per model × chunk of ``batch_size`` images."""
    params = _params(spec)
    return units_per_chunk(spec, lambda m, b, sl, i, e: _run(spec, params, m, b, sl, i, e))


def _run(spec, params, model, batch, sl, i: int, entry) -> dict[str, Any]:
    x, names = batch.x[sl].to(model.device), list(batch.names[sl])
    with torch.no_grad():
        pred0 = model(x).argmax(1)
    y = batch.y[sl].to(x.device) if batch.y is not None else pred0
    y = torch.where(y >= 0, y, pred0)
    inputs = {"clean": (x, pred0, torch.zeros_like(pred0, dtype=torch.bool))}
    extra: dict[str, np.ndarray] = {}
    for cond, method in _ATTACKS.items():
        res = attack(model, x, y, method, seed=spec.seed, **params[method])
        inputs[cond] = (res.x_adv, res.pred, res.success)
        if method == "ifgsm":
            extra["fgsm_eps"] = res.extras["eps"].cpu().numpy()
    lrp = {c: explain(model, xc, "lrp", target=p, **params["lrp"])["input"] for c, (xc, p, _) in inputs.items()}
    rows, sigs = [], []
    base = {"model": model.name, "data": entry["data"], "image": names, "label": y.cpu().numpy()}
    for c, (xc, p, ok) in inputs.items():
        rows.append(pd.DataFrame({**base, "condition": c, "pred": p.cpu().numpy(), "correct": (p == y).cpu().numpy(),
                                  "success": ok.cpu().numpy(), "lrp_cosine": M.cosine(lrp["clean"], lrp[c]).cpu().numpy(),
                                  "lrp_l1": M.l1(lrp["clean"], lrp[c]).cpu().numpy(),
                                  "fgsm_eps": extra["fgsm_eps"] if c == "fgsm" else np.nan}))
        pooled = F.adaptive_avg_pool2d(lrp[c][:, None], SIGNATURE_SIZE).flatten(1).cpu().numpy()
        sig = pd.DataFrame(pooled, columns=[f"s{j}" for j in range(pooled.shape[1])])
        sigs.append(pd.concat([pd.DataFrame({**base, "condition": c, "success": ok.cpu().numpy()}), sig], axis=1))
    out: dict[str, Any] = {"results": pd.concat(rows, ignore_index=True), "signatures": pd.concat(sigs, ignore_index=True)}
    if i == 0 and spec.examples:
        ex = {}
        for c, (xc, _, _) in inputs.items():
            ex[example_key(model.name, c, "image")] = xc[0].clone()
            ex[example_key(model.name, c, "lrp")] = lrp[c][0].half()
        out["examples"] = ex
    return out


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """Seed 001 Table 1's 'Clear' columns (Sec. III, Table 1; test sets described in Sec. IV).

    Per model: ``clear_test`` = accuracy on the clean images; ``{c}_test`` = accuracy on all attacked
    images; ``clear+{c}_test`` = accuracy on the paper's extended test set, the union of the clean test
    images and the *successful* adversarial images only (seed 001: "clear+FGSM_test" = 2,000 clean +
    940 successful FGSM images = 2,940; 85.80 % of 2,000 correct over 2,940 = the table's 58.37 %):
    ``(Σ_clean correct + Σ_successful correct) / (n_clean + n_successful)``. A success is the attack's
    own (prediction ≠ label), so the successful images all count as wrong here. The part sizes are
    the columns ``images`` (clean) and ``{c}_successful``.
    """
    rows = []
    for model, r in results.groupby("model", sort=False):
        clean = r[r.condition == "clean"]
        row = {"model": model, "images": len(clean), "clear_test": clean.correct.mean()}
        for c in _ATTACKS:
            a = r[r.condition == c]
            ok = a[a.success.astype(bool)]
            row[f"{c}_success_rate"] = a.success.mean()
            row[f"{c}_test"] = a.correct.mean()
            row[f"{c}_successful"] = len(ok)
            row[f"clear+{c}_test"] = pd.concat([clean.correct, ok.correct]).astype(float).mean()
        row["median_fgsm_eps"] = r[(r.condition == "fgsm") & r.success.astype(bool)].fgsm_eps.median()
        rows.append(row)
    return pd.DataFrame(rows)


def _matrix(sig: pd.DataFrame) -> np.ndarray:
    cols = [c for c in sig.columns if c.startswith("s") and c[1:].isdigit()]
    return sig[cols].to_numpy(np.float32)


def embed(sig: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """UMAP (umap-learn, 15 neighbours, seeded) of the LRP signatures of each model → columns u0, u1."""
    import umap

    parts = []
    for _, s in sig.groupby("model", sort=False):
        n = len(s)
        if n < 4:
            parts.append(s.assign(u0=0.0, u1=0.0))
            continue
        reducer = umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1)
        u = reducer.fit_transform(_matrix(s))
        parts.append(s.assign(u0=u[:, 0], u1=u[:, 1]))
    return pd.concat(parts, ignore_index=True)


def separability(sig: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """5-NN accuracy (5-fold, stratified, seeded) of telling clean / FGSM / one-pixel apart from LRP
    signatures, per model and per pair of conditions (chance = 0.5 for a pair)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rows = []
    for model, s in sig.groupby("model", sort=False):
        for attacked in _ATTACKS:
            d = s[(s.condition == "clean") | ((s.condition == attacked) & s.success.astype(bool))]
            counts = d.condition.value_counts()
            if len(counts) < 2 or counts.min() < 5:
                continue
            cv = StratifiedKFold(5, shuffle=True, random_state=seed)
            acc = cross_val_score(KNeighborsClassifier(5), _matrix(d), d.condition.to_numpy(), cv=cv)
            rows.append({"model": model, "pair": f"clean vs {attacked} (successful)", "images": len(d),
                         "knn_accuracy": float(acc.mean())})
    return pd.DataFrame(rows)


def lrp_shift_table(results: pd.DataFrame) -> pd.DataFrame:
    """How far each attack moves the LRP map (the local view, seed 001 Fig. 3): per model × attacked
    condition, the mean and standard deviation over the images of the cosine and L1 distance between
    the clean and the attacked map, over all images and over the successful attacks only."""
    rows = []
    for (model, cond), r in results[results.condition != "clean"].groupby(["model", "condition"], sort=False):
        for which, part in (("all", r), ("successful", r[r.success.astype(bool)])):
            rows.append({"model": model, "condition": cond, "images": which, "n": len(part),
                         "lrp_cosine_mean": part.lrp_cosine.mean(), "lrp_cosine_std": part.lrp_cosine.std(ddof=0),
                         "lrp_l1_mean": part.lrp_l1.mean(), "lrp_l1_std": part.lrp_l1.std(ddof=0)})
    return pd.DataFrame(rows)


#: the derived tables (``<name>.parquet`` beside ``results.parquet``) and what each holds
DERIVED = {
    "accuracy": "seed 001 Table 1's 'Clear' columns per model (accuracy_table)",
    "separability": "5-NN accuracy of clean vs attacked LRP signatures (separability)",
    "embedding": "UMAP coordinates u0, u1 of every signature (Figs. 4-6; embed)",
    "lrp_shift": "mean / std cosine and L1 of clean vs attacked LRP maps (lrp_shift_table)",
}


def derived(meta: dict, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every number the report shows (see :data:`DERIVED`), from ``results`` and ``signatures``; UMAP and
    the cross-validation are seeded with ``meta["spec"]["seed"]``. ``embedding`` keeps the identifying
    columns of each signature (not its 256 values)."""
    res, sig = tables["results"], tables["signatures"]
    seed = meta["spec"].get("seed", 0)
    ids = [c for c in sig.columns if not (c.startswith("s") and c[1:].isdigit())]
    return {"accuracy": accuracy_table(res), "separability": separability(sig, seed),
            "embedding": embed(sig, seed)[[*ids, "u0", "u1"]], "lrp_shift": lrp_shift_table(res)}


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    """``report.html`` from the derived tables (computed here when a folder lacks them)."""
    spec = meta["spec"]
    if any(name not in tables for name in DERIVED):
        tables = {**derived(meta, tables), **tables}
    res, acc = tables["results"], tables["accuracy"]
    figs = out / "figures"
    emb = tables["embedding"].assign(
        condition=lambda d: np.where((d.condition != "clean") & ~d.success.astype(bool), d.condition + " (failed)",
                                     d.condition),
        cls=lambda d: "class " + d.label.astype(str))
    f_umap = embedding_plot(figs / "umap_lrp_signatures.png", emb, hue="condition", facet="model",
                            title="UMAP of LRP signatures (seed 001 Figs. 4–6)")
    f_cls = embedding_plot(figs / "umap_lrp_by_class.png", emb[emb.condition == "clean"], hue="cls", facet="model",
                           title="UMAP of clean LRP signatures by true class (seed 001 Fig. 4)")
    shift = res[res.condition != "clean"].assign(label=lambda d: d.model + " · " + d.condition)
    f_shift = bar_plot(figs / "lrp_cosine.png", shift, x="label", y="lrp_cosine",
                       title="cosine of clean vs attacked LRP maps")
    sections = [
        Section("Accuracy (seed 001 Table 1, 'Clear' model)", "Accuracy on the clean test images, on their FGSM / "
                "one-pixel versions, and on the paper's extended test sets 'clear+…_test' (the clean images plus "
                "the successful adversarial images only; part sizes in 'images' and '…_successful'); success "
                "rates and the median minimal FGSM eps.", [], [acc]),
        Section("Global view: UMAP of LRP signatures", "LRP maps pooled to 16×16, embedded with UMAP per model; "
                "the table gives the 5-NN accuracy of telling clean from attacked signatures (chance 0.5).",
                [f_umap, f_cls], [tables["separability"]]),
        Section("Local view: LRP of clean vs attacked", "How much each attack moves the LRP map: cosine and L1 "
                "distance of the clean and the attacked map, over all images and over the successful attacks.",
                [f_shift], [tables["lrp_shift"]]),
    ]
    grids = []
    for model_name, by_cond in example_tree(examples).items():
        conds = [c for c in ("clean", *_ATTACKS) if "image" in by_cond.get(c, {})]
        rows = {c: by_cond[c]["image"][None].float() for c in conds}
        maps = {c: {"lrp": by_cond[c]["lrp"][None].float()} for c in conds}
        grids.append(map_grid(figs / f"grid_{safe_name(model_name)}.png", rows, maps, ["lrp"], title=model_name))
    if grids:
        sections.append(Section("Examples", "First image per model: clean, FGSM, one-pixel and their LRP maps.", grids))
    return write_report(out / "report.html", "advlens study: signatures (seed 001)", sections, spec,
                        meta.get("versions", {}))
