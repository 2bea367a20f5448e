"""The demo study: FGSM and PGD on EfficientNet-Lite0 and the bundled photos, seen through
Grad-CAM, Grad-CAM++ and LayerCAM at every layer, against matched Gaussian noise (seed 000).

For each image, attack and layer it records how similar the explanation of the adversarial
image is to the clean one (cosine of the maps H / max H, i.e. of the raw maps, seed 000 eqs. 5–6;
NISSIM of min–max scaled maps, seed 003 eq. 1), and the same for Gaussian noise with the
perturbation's mean and standard deviation. A layer is *compromised* for an image when the
adversarial similarity falls below the layer's median noise similarity; compromise probabilities
count the images whose attack succeeded (seed 000 § IV-E).

The demo is a study like the others (``advlens demo`` = ``advlens study`` with ``study = "demo"``):
the runner resumes it, and ``advlens report`` rebuilds its figures and report from its tables.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import torch
from pydantic import Field

from .. import metrics
from ..attacks import attack, matched_noise
from ..data import ImageBatch
from ..models import ClassifierModel
from ..report import Section, bar_plot, layer_shift_plot, write_report
from ._common import Unit, chunks, load_entry, main_entry, maps_in_batches, similarity_rows
from ._examples import example_key, image_grids
from .layer_shift import compromise_table
from .spec import Explainers, StudySpec, register_study

__all__ = ["DemoSpec", "plan", "derived", "report"]


def _default_attacks() -> dict[str, dict[str, Any]]:
    return {"fgsm": {"eps": 2 / 255}, "pgd": {"eps": 2 / 255, "alpha": 0.5 / 255, "steps": 10, "random_start": False}}


class DemoSpec(StudySpec):
    """Settings of the demo: every attack of ``attacks`` (name -> parameters) on the clean predictions, its
    matched noise at ``noise_strength``, every explainer at every layer.

    Attributes:
        attacks: ``{method: {param: value}}``, run in this order (default FGSM and PGD-10 at ε 2/255).
        explainers: layer methods compared (default Grad-CAM, Grad-CAM++, LayerCAM).
        noise_strength: scale of the matched Gaussian noise (seed 000).
    """

    study: Literal["demo"] = "demo"
    data: str = "samples"
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = 8
    attacks: Annotated[dict[str, dict[str, Any]], Field(min_length=1)] = Field(default_factory=_default_attacks)
    explainers: Explainers = Field(default_factory=lambda: ["gradcam", "gradcam++", "layercam"])
    noise_strength: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0


register_study("demo", DemoSpec)

_METRICS, _MINMAX = ("cosine", "nissim"), ("nissim",)  # cosine of raw maps (eq. 5), NISSIM of min-max maps


def plan(spec: DemoSpec) -> list[Unit]:
    """One unit per chunk of ``batch_size`` images."""
    model, batch = load_entry(main_entry(spec), spec)
    return [Unit(f"{i:05d}", lambda m, b, i=i, sl=sl: _run(spec, m, b, i, sl), (model, batch))
            for i, sl in enumerate(chunks(len(batch), spec.batch_size))]


def _run(spec: DemoSpec, model: ClassifierModel, batch: ImageBatch, i: int, sl: slice) -> dict[str, Any]:
    x, names = batch.x[sl].to(model.device), batch.names[sl]
    raw, pred = {}, {}
    raw["clean"], y = maps_in_batches(model, x, spec.explainers, "all", len(x), normalize=False)
    images, results, rows = {"clean": x}, {}, []
    for name, params in spec.attacks.items():  # attack each image's clean prediction
        res = results[name] = attack(model, x, y, method=name, seed=spec.seed, **params)
        images[name] = res.x_adv
        images[f"{name} noise"] = matched_noise(x, res.x_adv, spec.noise_strength, seed=spec.seed)
    for cond, xc in images.items():
        if cond != "clean":  # the predictions come from the same forward as the maps
            raw[cond], pred[cond] = maps_in_batches(model, xc, spec.explainers, "all", len(x), normalize=False)
    labels = pd.Series(model.labels)
    for name, res in results.items():
        success = res.success.cpu().numpy()
        for kind, cond in (("adversarial", name), ("noise", f"{name} noise")):
            rows.append(similarity_rows(raw["clean"], raw[cond], names, _METRICS, _MINMAX, attack=name,
                                        condition=kind, attack_success=success))
    attacks = pd.concat([pd.DataFrame({
        "image": names, "attack": name, "clean_pred": labels[y.cpu().numpy()].to_numpy(),
        "adv_pred": labels[res.pred.cpu().numpy()].to_numpy(), "success": res.success.cpu().numpy(),
        "adv_confidence": res.confidence.cpu().numpy(),
        "noise_flips": (pred[f"{name} noise"] != y).cpu().numpy(),
        "linf": (res.x_adv - x).abs().amax((1, 2, 3)).cpu().numpy(),
        "psnr": metrics.psnr(x, res.x_adv).cpu().numpy(), "time_s": res.time_s / len(x),
    }) for name, res in results.items()], ignore_index=True)
    out = {"results": pd.concat(rows, ignore_index=True), "attacks": attacks}
    if i == 0 and spec.examples:
        out["examples"] = _examples(images, raw, names, spec.examples)
    return out


def _examples(images: dict[str, torch.Tensor], raw, names, k: int) -> dict[str, torch.Tensor]:
    """``"image|condition|image"`` and ``"image|condition|layer"`` (the first explainer's min–max map, fp16)
    of the first ``k`` images, for the report's grids."""
    from ..explain.api import normalize_maps

    method = next(iter(raw["clean"]))
    out = {}
    for j in range(min(k, len(images["clean"]))):
        for cond, xc in images.items():
            out[example_key(names[j], cond, "image")] = xc[j]
            for layer, m in raw[cond][method].items():
                out[example_key(names[j], cond, layer)] = normalize_maps(m[j:j + 1])[0].half()
    return out


def derived(meta: dict, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every number of the report: ``attack_summary`` (success, noise flips, confidence, PSNR, L∞, time per
    attack), ``median_cosine`` (per attack × explainer × layer, adversarial vs noise) and
    ``compromise_probability`` (over the images each attack fooled, seed 000 § IV-E)."""
    res, att = tables["results"], tables["attacks"]
    summary = att.groupby("attack", sort=False).agg(
        images=("image", "nunique"), success_rate=("success", "mean"), noise_flip_rate=("noise_flips", "mean"),
        mean_confidence=("adv_confidence", "mean"), mean_psnr_db=("psnr", "mean"), max_linf=("linf", "max"),
        seconds_per_image=("time_s", "mean")).reset_index()
    per_layer = (res.groupby(["attack", "explainer", "condition", "layer_index", "layer"], sort=False).cosine
                 .median().unstack("condition").reset_index()
                 .rename(columns={"adversarial": "median_cos_adversarial", "noise": "median_cos_noise"}))
    comp = compromise_table(res, "median", by=("attack", "explainer"))
    prob = (comp.groupby(["attack", "explainer", "layer_index", "layer"], sort=False)
            .agg(compromise_probability=("compromised", "mean"), images=("image", "nunique")).reset_index())
    return {"attack_summary": summary, "median_cosine": per_layer, "compromise_probability": prob}


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    """``report.html`` (and ``figures/``) in ``out``: every number from the :func:`derived` tables (computed
    here if absent), the spec and the versions the run recorded."""
    spec = meta["spec"]
    d = tables if "attack_summary" in tables else {**tables, **derived(meta, tables)}
    res, att = tables["results"], tables["attacks"]
    layers = list(dict.fromkeys(res.sort_values("layer_index").layer))
    figs = out / "figures"
    shift = []
    for m in spec["explainers"]:
        df = res[res.explainer == m].assign(condition=lambda t: t.condition + " (" + t.attack + ")")
        shift.append(layer_shift_plot(figs / f"shift_{m}.png", df, x="layer", y="cosine", hue="condition",
                                      layer_order=layers, title=f"{m}: cosine similarity to the clean map, per layer"))
    n = att.image.nunique()
    bars = [bar_plot(figs / "attacks.png", att.assign(success=att.success.astype(float)), x="attack", y="success",
                     errorbars="wilson", title=f"attack success rate ({n} images; 95 % Wilson intervals)",
                     ylabel="success rate")]
    top = (d["compromise_probability"].sort_values("compromise_probability", ascending=False)
           .groupby(["attack", "explainer"], sort=False).head(3))
    sections = [
        Section("Attacks", f"Untargeted attacks on {n} images against their clean predictions.", bars,
                [d["attack_summary"], att]),
        Section("Explanation shift per layer",
                "Cosine similarity between each layer's map of the clean image and of the attacked image, "
                "versus Gaussian noise with the same mean and standard deviation (seed 000). Lines: median; "
                "bands: interquartile range.", shift, [d["median_cosine"]]),
        Section("Maps at several depths", "Rows: clean, adversarial and matched-noise images; columns: layers.",
                _grids(figs, examples, layers)),
        Section("Compromised layers",
                "Fraction of the adversarial examples (images whose attack succeeded; 'images' counts them) "
                "whose adversarial similarity falls below the layer's median noise similarity (seed 000); the "
                "three most compromised layers per attack and method.", [], [top]),
    ]
    params = {k: v for k, v in spec.items() if k != "models"}
    return write_report(out / "report.html", "advlens demo", sections, params, meta.get("versions", {}))


def _grids(figs: Path, examples: dict[str, torch.Tensor], layers: list[str]) -> list[Path]:
    """One grid per example image: its conditions (rows) at five depths, first to last layer (columns)."""
    picks = [layers[round(i * (len(layers) - 1) / 4)] for i in range(5)] if len(layers) > 5 else layers
    return image_grids(figs, examples, picks, stem=lambda j, name: f"grid_{j}",
                       title=lambda name: f"{name}: maps at five depths")
