"""Seed 003 (Chakraborty et al.): Grad-CAM shift under FGSM at every layer, across architectures.

For each architecture and eps: white-box FGSM (the model's own gradient) and black-box FGSM
transferred from a surrogate model; NISSIM = (1 − SSIM)/2 between the clean and attacked
Grad-CAM of every layer (seed 003 eq. 1); MOD = mean NISSIM over images and layers for one eps
(eq. 2); VID = standard deviation of MOD across the eps values (eqs. 3–4, population form,
eps = 0 excluded); accuracy and PSNR per eps (seed 003 Tables 1–2, Fig. 3). SSIM: Gaussian
window 11, σ 1.5, C1 = 0.01², C2 = 0.03², valid region (as skimage).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import Field
import torch

from .. import metrics as M
from .._checks import AdvlensError
from ..attacks import objective_grad
from ..explain.api import layers_for
from ..report import Section, layer_shift_plot, map_grid, write_report
from ._common import chunks, load_entry, maps_in_batches, safe_name, similarity_rows
from .runner import Unit
from .spec import Explainers, Layers, Metrics, ModelEntry, Strengths, StudySpec, register_study

__all__ = ["ModVidSpec", "plan", "report", "mod_vid_table"]


class ModVidSpec(StudySpec):
    """Settings of the MOD/VID study (seed 003): FGSM at each eps, white-box and transferred from a
    surrogate, on every architecture of ``models``.

    Attributes:
        models: one entry per architecture (at least one), each optionally with a ``surrogate``.
        strengths: the FGSM eps values (seed 003: 0.01 … 0.1).
        explainers, layers, metrics: what is computed and compared at every layer (NISSIM always).
    """

    study: Literal["mod_vid"] = "mod_vid"
    models: Annotated[list[ModelEntry], Field(min_length=1)]
    strengths: Strengths
    explainers: Explainers
    layers: Layers
    metrics: Metrics


register_study("mod_vid", ModVidSpec)


def plan(spec: ModVidSpec) -> list[Unit]:
    """One unit per architecture × chunk of ``batch_size`` images."""
    if spec.attack.get("method") != "fgsm":
        raise AdvlensError(f"the mod_vid study uses FGSM (seed 003); got attack {spec.attack.get('method')!r}")
    metric_names = list(dict.fromkeys(["nissim", *spec.metrics]))
    units = []
    for mi, entry in enumerate(spec.models):
        model, batch = load_entry(entry, spec)
        for m in spec.explainers:
            layers_for(model, m, spec.layers)
        surrogate = None
        if entry.get("surrogate"):
            surrogate, _ = load_entry({"data": entry["data"], **entry["surrogate"]}, spec, limit=1)
            if surrogate.input_size != model.input_size:
                raise AdvlensError(f"surrogate {surrogate.name} takes {surrogate.input_size}, {model.name} {model.input_size}")
        label = f"{mi:02d}-{safe_name(model.name)}"
        for i, sl in enumerate(chunks(len(batch), spec.batch_size)):
            units.append(Unit(f"{label}-{i:05d}", lambda m, s, b, sl=sl, i=i, e=entry:
                              _run(spec, m, s, b, sl, i, e, metric_names), (model, surrogate, batch)))
    return units


def _run(spec, model, surrogate, batch, sl, i, entry, metric_names) -> dict[str, Any]:
    x, names = batch.x[sl].to(model.device), batch.names[sl]
    clean, pred0 = maps_in_batches(model, x, spec.explainers, spec.layers, spec.batch_size)
    y = pred0.clone()
    if batch.y is not None:  # true labels where the data set has them (seed 003 measures accuracy)
        known = batch.y[sl].to(x.device) >= 0
        y[known] = batch.y[sl].to(x.device)[known]
    direction = {"white-box": objective_grad(model, x, y)[0].sign()}
    if surrogate is not None:
        direction[f"transfer from {surrogate.name} seed {entry['surrogate'].get('seed', 0)}"] = \
            objective_grad(surrogate, x, y)[0].sign()
    base = {"model": model.name, "data": entry["data"]}
    rows, imgs, examples = [], [], {}
    imgs.append(pd.DataFrame({**base, "image": names, "source": "clean", "eps": 0.0, "label": y.cpu().numpy(),
                              "pred": pred0.cpu().numpy(), "correct": (pred0 == y).cpu().numpy(), "psnr": float("inf")}))
    for source, d in direction.items():
        for eps in spec.strengths:
            xe = (x + eps * d).clamp(0, 1)
            maps, pred = maps_in_batches(model, xe, spec.explainers, spec.layers, spec.batch_size)
            rows.append(similarity_rows(clean, maps, names, metric_names, **base, source=source, eps=eps))
            imgs.append(pd.DataFrame({**base, "image": names, "source": source, "eps": eps, "label": y.cpu().numpy(),
                                      "pred": pred.cpu().numpy(), "correct": (pred == y).cpu().numpy(),
                                      "psnr": M.psnr(x, xe).cpu().numpy()}))
            if i == 0 and source == "white-box" and spec.examples:
                method = spec.explainers[0]
                examples[f"{model.name}|eps {eps:g}|image"] = xe[0]
                examples.update({f"{model.name}|eps {eps:g}|{l}": m[0].half() for l, m in maps[method].items()})
    if examples:
        method = spec.explainers[0]
        examples[f"{model.name}|clean|image"] = x[0]
        examples.update({f"{model.name}|clean|{l}": m[0].half() for l, m in clean[method].items()})
    out = {"results": pd.concat(rows, ignore_index=True), "images": pd.concat(imgs, ignore_index=True)}
    if examples:
        out["examples"] = examples
    return out


def mod_vid_table(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MOD per model × source × explainer × eps (mean NISSIM over images and layers, seed 003 eq. 2)
    and VID per model × source × explainer (population std of MOD across eps, eqs. 3–4)."""
    keys = ["model", "source", "explainer"]
    mod = results.groupby([*keys, "eps"]).nissim.mean().rename("MOD").reset_index()
    vid = (mod.groupby(keys).MOD.apply(lambda s: float(M.vid(torch.tensor(s.to_numpy())))).rename("VID")
           .reset_index())
    return mod, vid


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    spec = meta["spec"]
    res, imgs = tables["results"], tables["images"]
    figs = out / "figures"
    mod, vid = mod_vid_table(res)
    wide = mod.pivot_table(index=["model", "source", "explainer"], columns="eps", values="MOD").reset_index()
    wide = wide.merge(vid, on=["model", "source", "explainer"])
    acc = imgs.groupby(["model", "source", "eps"]).agg(accuracy=("correct", "mean"), psnr_db=("psnr", "mean"),
                                                       images=("image", "count")).reset_index()
    per_image = (res.groupby(["model", "source", "explainer", "eps", "image"]).nissim.mean().reset_index()
                 .assign(curve=lambda d: d.model + " · " + d.source, eps=lambda d: d.eps.map(lambda e: f"{e:g}")))
    eps_order = [f"{e:g}" for e in sorted(res.eps.unique())]
    f_mod = layer_shift_plot(figs / "mod_vs_eps.png", per_image, x="eps", y="nissim", hue="curve",
                             layer_order=eps_order, title="MOD (mean NISSIM over layers) vs FGSM eps",
                             ylabel="NISSIM (mean over layers)", xlabel="FGSM eps")
    acc_plot = acc[acc.source != "clean"].assign(curve=lambda d: d.model + " · " + d.source,
                                                 eps=lambda d: d.eps.map(lambda e: f"{e:g}"))
    f_acc = layer_shift_plot(figs / "accuracy_vs_eps.png", acc_plot, x="eps", y="accuracy", hue="curve",
                             layer_order=eps_order, title="accuracy under FGSM", band=None, xlabel="FGSM eps")
    layer_figs = []
    for model_name, r in res[res.source == "white-box"].groupby("model", sort=False):
        order = list(dict.fromkeys(r.sort_values("layer_index").layer))
        layer_figs.append(layer_shift_plot(
            figs / f"nissim_layers_{safe_name(model_name)}.png", r.assign(eps=r.eps.map(lambda e: f"eps {e:g}")),
            x="layer", y="nissim", hue="eps", layer_order=order, title=f"{model_name}: NISSIM per layer (white-box)"))
    sections = [
        Section("MOD and VID", "MOD: mean NISSIM between clean and attacked Grad-CAM over images and layers, per "
                "eps (seed 003 eq. 2); VID: standard deviation of MOD across eps (eqs. 3–4). Lower = more stable.",
                [f_mod], [wide]),
        Section("Accuracy and PSNR per eps", "Seed 003 Tables 1–2 and Fig. 3, measured here.", [f_acc], [acc]),
        Section("NISSIM per layer", "Where in the network the Grad-CAM shift happens (white-box).", layer_figs),
    ]
    grids = _grids(figs, examples)
    if grids:
        sections.append(Section("Grad-CAM per layer and eps", "First image of each model, white-box FGSM.", grids))
    return write_report(out / "report.html", "advlens study: mod_vid (seed 003)", sections,
                        {k: v for k, v in spec.items() if k != "models"} | {"models": spec["models"]},
                        meta.get("versions", {}))


def _grids(figs: Path, examples: dict[str, torch.Tensor]) -> list[Path]:
    paths = []
    for model_name in dict.fromkeys(k.split("|")[0] for k in examples):
        conds = list(dict.fromkeys(k.split("|")[1] for k in examples if k.startswith(model_name + "|")))
        conds = ["clean"] + [c for c in conds if c != "clean"]
        layers = [k.split("|")[2] for k in examples if k.startswith(f"{model_name}|clean|") and not k.endswith("|image")]
        picks = layers if len(layers) <= 6 else [layers[round(i * (len(layers) - 1) / 5)] for i in range(6)]
        rows = {c: examples[f"{model_name}|{c}|image"][None].float() for c in conds}
        maps = {c: {l: examples[f"{model_name}|{c}|{l}"][None].float() for l in picks} for c in conds}
        paths.append(map_grid(figs / f"grid_{safe_name(model_name)}.png", rows, maps, picks, title=model_name))
    return paths
