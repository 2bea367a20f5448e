"""Seed 003 (Chakraborty et al.): Grad-CAM shift under FGSM at every layer, across architectures.

For each architecture and eps: white-box FGSM (the model's own gradient) and black-box FGSM
transferred from the entry's ``surrogate`` (seed 003 § 4.1: FGSM made on one ResNet-50 and applied to
every other network; the ``seed003`` preset transfers from ``small_resnet_<data>`` to each small VGG;
a differently seeded twin, ``{model = "small_vgg_lfw", seed = 1}``, was its source before issue 16 and
remains a choice). The ``source`` column names where each FGSM direction came from and
``source_model`` the model whose gradient made it. NISSIM = (1 − SSIM)/2 between the clean and attacked
Grad-CAM of every layer (seed 003 eq. 1); MOD = mean NISSIM over the N images of the adversarial
set of one eps (eq. 2), one map per image at the paper's layer, the last convolutional layer
(§ 4.4: the Grad-CAM "raw heatmap" of Fig. 5; here ``model.cam_layer``, the layer feeding global
pooling, else the model's last explainable layer) — ``mod_layers = "last"``; ``"all"`` averages
over images and every explained layer (the study's MOD before issue 16). MOD per layer is kept as
its own table (our extension). VID = standard deviation of MOD across the eps values (eqs. 3–4,
population form, eps = 0 excluded), from the MOD that ``mod_layers`` picks; accuracy and PSNR per
eps (seed 003 Tables 1–2, Fig. 3). SSIM: Gaussian window 11, σ 1.5, C1 = 0.01², C2 = 0.03², valid
region (as skimage), on min–max scaled maps in [0, 1] (the paper names no scaling; the constants
assume that range).
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
from ._examples import example_key, example_tree
from .runner import Unit
from .spec import Explainers, Layers, Metrics, ModelEntry, Strengths, StudySpec, register_study

__all__ = ["ModVidSpec", "plan", "report", "derived", "mod_vid_table", "mod_per_layer_table", "mod_per_image_table",
           "accuracy_psnr_table", "paper_layer", "DERIVED"]


class ModVidSpec(StudySpec):
    """Settings of the MOD/VID study (seed 003): FGSM at each eps, white-box and transferred from a
    surrogate, on every architecture of ``models``.

    Attributes:
        models: one entry per architecture (at least one), each optionally with a ``surrogate``.
        strengths: the FGSM eps values (seed 003: 0.01 … 0.1).
        explainers, layers, metrics: what is computed and compared at every layer (NISSIM always).
        mod_layers: the maps MOD averages over the images: ``last`` (one map per image at the last
            convolutional layer, seed 003 eq. 2 and § 4.4, paper) or ``all`` (every explained layer,
            before issue 16); VID (eqs. 3–4) is computed from that MOD.
    """

    study: Literal["mod_vid"] = "mod_vid"
    models: Annotated[list[ModelEntry], Field(min_length=1)]
    strengths: Strengths
    explainers: Explainers
    layers: Layers
    metrics: Metrics
    mod_layers: Literal["last", "all"] = "last"


def paper_layer(model, computed: list[str]) -> str:
    """The layer of seed 003's MOD among the ``computed`` layers of one explainer (in any order).

    The last convolutional layer (seed 003 § 4.4): ``model.cam_layer`` (the layer feeding global
    pooling), else the model's last explainable layer; when that one was not computed (``layers``
    restricted), the deepest computed layer; ``input`` for input-pixel explainers.
    """
    want = model.cam_layer or list(model.layers)[-1]
    if want in computed:
        return want
    order = list(model.layers)
    known = [n for n in computed if n in order]
    return max(known, key=order.index) if known else computed[-1]


# Seed 003 (Chakraborty et al.): FGSM eps 0.01-0.1 white-box and transferred from another architecture
# (§ 4.1: made on one ResNet-50, applied to every other network; here small_resnet_<data> -> small_vgg_<data>),
# Grad-CAM at every layer, NISSIM, MOD/VID at the last conv layer, PSNR and accuracy per eps.
register_study("mod_vid", ModVidSpec, presets={"seed003": {
    "models": [
        {"model": "small_vgg_lfw", "data": "lfw", "split": "test",
         "surrogate": {"model": "small_resnet_lfw"}},
        {"model": "small_vgg_digits", "data": "digits", "split": "test",
         "surrogate": {"model": "small_resnet_digits"}},
        {"model": "small_vgg_shapes", "data": "shapes", "split": "test", "n": 2500,
         "surrogate": {"model": "small_resnet_shapes"}},
        {"model": "efficientnet_lite0", "data": "samples"},
    ],
    "attack": {"method": "fgsm"}, "strengths": [0.01, 0.05, 0.075, 0.1],
    "explainers": ["gradcam"], "metrics": ["nissim"],
}})


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
    mod_layer = {m: paper_layer(model, list(layers)) for m, layers in clean.items()}  # seed 003 § 4.4
    y = pred0.clone()
    if batch.y is not None:  # true labels where the data set has them (seed 003 measures accuracy)
        known = batch.y[sl].to(x.device) >= 0
        y[known] = batch.y[sl].to(x.device)[known]
    # FGSM (seed 003 § 2.2): x + eps * sign(grad_x J(theta, x, y)), the gradient of the attacked model or
    # of the surrogate (black-box transfer, § 4.1); {source: (direction [N,C,H,W], source model name)}
    direction = {"white-box": (objective_grad(model, x, y)[0].sign(), model.name)}
    if surrogate is not None:
        direction[f"transfer from {surrogate.name} seed {entry['surrogate'].get('seed', 0)}"] = \
            (objective_grad(surrogate, x, y)[0].sign(), surrogate.name)
    base = {"model": model.name, "data": entry["data"]}
    rows, imgs, examples = [], [], {}
    imgs.append(pd.DataFrame({**base, "image": names, "source": "clean", "source_model": "", "eps": 0.0,
                              "label": y.cpu().numpy(), "pred": pred0.cpu().numpy(),
                              "correct": (pred0 == y).cpu().numpy(), "psnr": float("inf")}))
    for source, (d, made_by) in direction.items():
        for eps in spec.strengths:
            xe = (x + eps * d).clamp(0, 1)
            maps, pred = maps_in_batches(model, xe, spec.explainers, spec.layers, spec.batch_size)
            r = similarity_rows(clean, maps, names, metric_names, **base, source=source, source_model=made_by, eps=eps)
            rows.append(r.assign(mod_layer=r.explainer.map(mod_layer)))
            imgs.append(pd.DataFrame({**base, "image": names, "source": source, "source_model": made_by, "eps": eps,
                                      "label": y.cpu().numpy(),
                                      "pred": pred.cpu().numpy(), "correct": (pred == y).cpu().numpy(),
                                      "psnr": M.psnr(x, xe).cpu().numpy()}))
            if i == 0 and source == "white-box" and spec.examples:
                method = spec.explainers[0]
                examples[example_key(model.name, f"eps {eps:g}", "image")] = xe[0]
                examples.update({example_key(model.name, f"eps {eps:g}", l): m[0].half() for l, m in maps[method].items()})
    if examples:
        method = spec.explainers[0]
        examples[f"{model.name}|clean|image"] = x[0]
        examples.update({f"{model.name}|clean|{l}": m[0].half() for l, m in clean[method].items()})
    out = {"results": pd.concat(rows, ignore_index=True), "images": pd.concat(imgs, ignore_index=True)}
    if examples:
        out["examples"] = examples
    return out


def _mod_rows(results: pd.DataFrame, mod_layers: str) -> pd.DataFrame:
    """The NISSIM rows MOD averages: ``last`` = the ``mod_layer`` of each row (see :func:`paper_layer`),
    ``all`` = every row."""
    if mod_layers == "all":
        return results
    if mod_layers != "last":
        raise AdvlensError(f"mod_layers must be 'last' or 'all', got {mod_layers!r}")
    if "mod_layer" in results:
        return results[results.layer == results.mod_layer]
    if "layer_index" not in results:
        raise AdvlensError("results need a 'mod_layer' or 'layer_index' column to pick the last layer")
    # results written before issue 16: the last computed layer of each model × explainer
    last = results.groupby(["model", "explainer"]).layer_index.transform("max")
    return results[results.layer_index == last]


def mod_vid_table(results: pd.DataFrame, mod_layers: str = "last") -> tuple[pd.DataFrame, pd.DataFrame]:
    """MOD per model × source × explainer × eps and VID per model × source × explainer (seed 003).

    MOD (eq. 2) = mean NISSIM over the images of the adversarial set of one eps, one map per image at
    the last convolutional layer (``mod_layers="last"``, § 4.4; column ``layer``), or over images and
    every layer (``"all"``; ``layer`` = ``"all"``); ``images`` = how many images were averaged.
    VID (eqs. 3–4) = population standard deviation of that MOD across eps.
    """
    keys = ["model", "source", "explainer"]
    rows = _mod_rows(results, mod_layers)
    if mod_layers == "all":
        rows = rows.assign(layer="all")
    mod = (rows.groupby([*keys, "eps"]).agg(MOD=("nissim", "mean"), layer=("layer", "first"),
                                            images=("image", "nunique")).reset_index())
    vid = (mod.groupby(keys).MOD.apply(lambda s: float(M.vid(torch.tensor(s.to_numpy())))).rename("VID")
           .reset_index())
    return mod, vid


def mod_per_layer_table(results: pd.DataFrame) -> pd.DataFrame:
    """MOD of every layer (our extension of seed 003 eq. 2): per model × source × explainer × eps ×
    layer, the mean NISSIM over the images, and ``images``, how many."""
    keys = ["model", "source", "explainer", "eps", "layer"]
    extra = ["layer_index"] if "layer_index" in results else []
    return (results.groupby([*keys, *extra]).agg(MOD=("nissim", "mean"), images=("image", "nunique"))
            .reset_index())


def mod_per_image_table(results: pd.DataFrame, mod_layers: str = "last") -> pd.DataFrame:
    """The NISSIM each image adds to MOD (seed 003 eq. 2's summands): per model × source × explainer × eps
    × image, its NISSIM at the MOD layer (``mod_layers="last"``) or its mean over layers (``"all"``).
    The mean of ``nissim`` over the images of one eps is :func:`mod_vid_table`'s MOD."""
    keys = ["model", "source", "explainer", "eps", "image"]
    return _mod_rows(results, mod_layers).groupby(keys).nissim.mean().reset_index()


def accuracy_psnr_table(images: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and PSNR per model × source × eps (seed 003 Tables 1–2, Fig. 3).

    ``accuracy`` = fraction of the images whose prediction is their label (source ``clean``, eps 0:
    the clean test set); ``psnr_db`` = mean over the images of each image's PSNR against its clean
    image (:func:`advlens.metrics.psnr`; inf for the clean set); ``images`` = how many.
    """
    return (images.groupby(["model", "source", "eps"]).agg(accuracy=("correct", "mean"), psnr_db=("psnr", "mean"),
                                                           images=("image", "count")).reset_index())


#: the derived tables (``<name>.parquet`` beside ``results.parquet``) and what each holds
DERIVED = {
    "mod": "MOD per model × source × explainer × eps at the paper's layer (seed 003 eq. 2, § 4.4)",
    "vid": "VID per model × source × explainer (seed 003 eqs. 3–4)",
    "mod_per_layer": "MOD of every layer (our extension)",
    "mod_per_image": "each image's NISSIM at the MOD layer (the summands of eq. 2)",
    "accuracy_psnr": "accuracy and PSNR per model × source × eps (seed 003 Tables 1–2, Fig. 3)",
}


def derived(meta: dict, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every number the report shows, from ``results`` and ``images`` (see :data:`DERIVED`).

    ``meta["spec"]["mod_layers"]`` picks MOD's maps; a ``spec.json`` written before issue 16 has no such
    key and its MOD averaged every layer (``"all"``).
    """
    mod_layers = meta["spec"].get("mod_layers", "all")
    res = tables["results"]
    mod, vid = mod_vid_table(res, mod_layers)
    return {"mod": mod, "vid": vid, "mod_per_layer": mod_per_layer_table(res),
            "mod_per_image": mod_per_image_table(res, mod_layers),
            "accuracy_psnr": accuracy_psnr_table(tables["images"])}


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    """``report.html`` from the derived tables (computed here when a folder lacks them)."""
    spec = meta["spec"]
    if any(name not in tables for name in DERIVED):
        tables = {**derived(meta, tables), **tables}
    res = tables["results"]
    mod, vid, per_layer, acc = (tables[n] for n in ("mod", "vid", "mod_per_layer", "accuracy_psnr"))
    figs = out / "figures"
    mod_layers = spec.get("mod_layers", "all")  # spec.json written before issue 16: MOD over all layers
    keys = ["model", "source", "explainer"]
    wide = mod.pivot_table(index=keys, columns="eps", values="MOD").reset_index()
    wide = (mod.groupby(keys).agg(layer=("layer", "first"), images=("images", "max")).reset_index()
            .merge(wide, on=keys).merge(vid, on=keys))
    per_layer_wide = (per_layer.pivot_table(index=[*keys, "layer_index", "layer"] if "layer_index" in per_layer
                                            else [*keys, "layer"], columns="eps", values="MOD").reset_index())
    per_image = tables["mod_per_image"].assign(curve=lambda d: d.model + " · " + d.source,
                                               eps=lambda d: d.eps.map(lambda e: f"{e:g}"))
    eps_order = [f"{e:g}" for e in sorted(mod.eps.unique())]
    where = "last convolutional layer" if mod_layers == "last" else "mean over layers"
    f_mod = layer_shift_plot(figs / "mod_vs_eps.png", per_image, x="eps", y="nissim", hue="curve",
                             layer_order=eps_order, title=f"MOD (NISSIM, {where}) vs FGSM eps",
                             ylabel=f"NISSIM ({where})", xlabel="FGSM eps")
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
        Section("MOD and VID", (
            "MOD: mean NISSIM between clean and attacked Grad-CAM over the images of each eps (seed 003 eq. 2), "
            + ("one map per image at the last convolutional layer (§ 4.4; column 'layer')"
               if mod_layers == "last" else "and over every explained layer (mod_layers = 'all', not the paper's)")
            + "; 'images' = images averaged. VID: standard deviation of MOD across eps (eqs. 3–4). "
              "Lower = more stable. Seed 003's Table 3 is the MOD of the transferred (black-box) attack, "
              "§ 4.4; 'source' names the model that made each FGSM."), [f_mod], [wide]),
        Section("MOD per layer", "Our extension of seed 003 eq. 2: the mean NISSIM over the images at each "
                "layer, per eps.", [], [per_layer_wide]),
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
    for model_name, by_cond in example_tree(examples).items():
        conds = ["clean"] + [c for c in by_cond if c != "clean"]
        layers = [k for k in by_cond.get("clean", {}) if k != "image"]
        picks = layers if len(layers) <= 6 else [layers[round(i * (len(layers) - 1) / 5)] for i in range(6)]
        rows = {c: by_cond[c]["image"][None].float() for c in conds}
        maps = {c: {l: by_cond[c][l][None].float() for l in picks} for c in conds}
        paths.append(map_grid(figs / f"grid_{safe_name(model_name)}.png", rows, maps, picks, title=model_name))
    return paths
