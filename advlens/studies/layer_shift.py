"""Seed 000 (Renkhoff, Tan et al.): which layers' explanations does an adversarial perturbation
move more than Gaussian noise of the same statistics?

For every image S with perturbation N_a (found by the spec's attack, DLFuzz in the preset) and
each strength s: D_a = cos(G(S), G(S + s·N_a)) and D_g = cos(G(S), G(S + s·N_g)) per layer, with
N_g ~ N(mean(N_a), std(N_a)) (seed 000 eqs. 6–8 as written in seed 002). A layer is *compromised*
for an image when D_a is below the layer's median D_g over the data set (at the same strength);
the authors' code uses the mean (``noise_rule = "mean"``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from .. import metrics as M
from ..attacks import attack, matched_noise
from ..data import ImageBatch
from ..explain.api import layers_for
from ..models import ClassifierModel
from ..report import Section, bar_plot, layer_shift_plot, map_grid, write_report
from ._common import chunks, load_entry, maps_in_batches, similarity_rows
from .runner import Unit
from .spec import Explainers, Layers, Metrics, Strengths, StudySpec, register_study

__all__ = ["LayerShiftSpec", "plan", "report", "compromise_table"]


class LayerShiftSpec(StudySpec):
    """Settings of the layer-shift study (seed 000): the attack's perturbation scaled by each strength
    against matched Gaussian noise, the explanations compared per layer.

    Attributes:
        strengths: perturbation scales (seed 000: 0.25 … 4).
        explainers, layers, metrics: what is computed and compared at every layer.
        noise_rule: the compromise threshold, ``median`` of the noise similarities (paper) or ``mean``
            (the authors' code).
        explain_target: class each map explains: ``predicted`` (the input's own prediction, seed 000)
            or ``clean`` (the clean image's prediction on every input).
    """

    study: Literal["layer_shift"] = "layer_shift"
    strengths: Strengths
    explainers: Explainers
    layers: Layers
    metrics: Metrics
    noise_rule: Literal["median", "mean"] = "median"
    explain_target: Literal["predicted", "clean"] = "predicted"


register_study("layer_shift", LayerShiftSpec)


def plan(spec: LayerShiftSpec) -> list[Unit]:
    """One unit per chunk of ``batch_size`` images."""
    model, batch = load_entry({"model": spec.model, "data": spec.data, "weights": spec.weights,
                               "split": spec.split}, spec)
    for m in spec.explainers:  # fail on unknown explainers/layers before anything is written
        layers_for(model, m, spec.layers)
    params = {k: v for k, v in spec.attack.items() if k != "method"}

    def run(model: ClassifierModel, batch: ImageBatch, i: int, sl: slice) -> dict[str, Any]:
        x, names = batch.x[sl].to(model.device), batch.names[sl]
        seed = spec.seed  # every draw is per image (advlens._rng): chunks need no seeds of their own
        clean, y = maps_in_batches(model, x, spec.explainers, spec.layers, spec.batch_size)  # explains y
        res = attack(model, x, y, method=spec.attack["method"], seed=seed, **params)
        target = y if spec.explain_target == "clean" else None
        rows, imgs, examples = [], [], {}
        for s in spec.strengths:
            conds = {"adversarial": (x + s * (res.x_adv - x)).clamp(0, 1),
                     "noise": matched_noise(x, res.x_adv, strength=s, seed=seed)}
            for cond, xc in conds.items():
                maps, pred = maps_in_batches(model, xc, spec.explainers, spec.layers, spec.batch_size, target)
                rows.append(similarity_rows(clean, maps, names, spec.metrics, attack=spec.attack["method"],
                                            strength=s, condition=cond))
                imgs.append(pd.DataFrame({
                    "image": names, "strength": s, "condition": cond, "label": y.cpu().numpy(),
                    "pred": pred.cpu().numpy(), "flipped": (pred != y).cpu().numpy(),
                    "psnr": M.psnr(x, xc).cpu().numpy(), "linf": (xc - x).abs().amax((1, 2, 3)).cpu().numpy(),
                }))
                if i == 0 and s == 1.0:
                    examples.update(_examples(x, xc, clean, maps, names, cond, spec.examples))
        info = {"chunk": i, "images": len(x), "attack_success": res.success_rate, "time_s": res.time_s}
        info.update({k: float(v) for k, v in res.extras.items() if k.startswith("coverage_") and v.ndim == 0})
        out = {"results": pd.concat(rows, ignore_index=True), "images": pd.concat(imgs, ignore_index=True),
               "attack": pd.DataFrame([info])}
        if "coverage_curve" in res.extras:  # DLFuzz: neuron coverage after each iteration
            curve = res.extras["coverage_curve"].cpu().numpy()
            out["coverage"] = pd.DataFrame({"chunk": i, "iteration": range(len(curve)), "coverage": curve})
        if examples:
            out["examples"] = examples
        return out

    return [Unit(f"{i:05d}", lambda m, b, i=i, sl=sl: run(m, b, i, sl), (model, batch))
            for i, sl in enumerate(chunks(len(batch), spec.batch_size))]


def _examples(x, xc, clean, maps, names, cond, k) -> dict[str, torch.Tensor]:
    """Images and the first explainer's maps of the first ``k`` images (for the report's grids)."""
    method = next(iter(clean))
    out = {}
    for j in range(min(k, len(x))):
        out[f"{names[j]}|clean|image"] = x[j]
        out[f"{names[j]}|{cond}|image"] = xc[j]
        for layer in clean[method]:
            out[f"{names[j]}|clean|{layer}"] = clean[method][layer][j].half()
            out[f"{names[j]}|{cond}|{layer}"] = maps[method][layer][j].half()
    return out


def compromise_table(results: pd.DataFrame, rule: str = "median", metric: str = "cosine",
                     by: tuple[str, ...] = ("explainer", "strength")) -> pd.DataFrame:
    """Per image × ``by`` × layer: D_a, the layer's noise threshold, compromised (seed 000).

    The threshold of a layer is the ``rule`` (median or mean) of D_g over all images with the same
    ``by`` values (explainer and strength); compromised = D_a < threshold.
    """
    keys = [*by, "layer"]
    noise = results[results.condition == "noise"]
    thr = noise.groupby(keys)[metric].agg(rule).rename("threshold").reset_index()
    adv = results[results.condition == "adversarial"].merge(thr, on=keys)
    adv["compromised"] = adv[metric] < adv["threshold"]
    return adv[["image", *keys, "layer_index", metric, "threshold", "compromised"]]


def report(out: Path, meta: dict, tables: dict[str, pd.DataFrame], examples: dict[str, torch.Tensor]) -> Path:
    spec = meta["spec"]
    res, imgs = tables["results"], tables.get("images")
    comp = compromise_table(res, spec["noise_rule"])
    layer_order = list(dict.fromkeys(res.sort_values("layer_index").layer))
    figs = out / "figures"
    sections = []
    prob = comp.groupby(["explainer", "strength", "layer_index", "layer"]).compromised.mean().rename(
        "compromise_probability").reset_index()
    for method in spec["explainers"]:
        c = comp[comp.explainer == method].assign(strength=lambda d: d.strength.map(lambda s: f"{s:g}×"))
        f1 = bar_plot(figs / f"compromise_{method}.png", c.assign(compromised=c.compromised.astype(float)),
                      x="layer", y="compromised", hue="strength", annotate=False, errorbars=False,
                      title=f"{method}: probability that a layer is compromised, per strength",
                      ylabel="compromise probability")
        counts = c.groupby(["strength", "image"]).compromised.sum().rename("compromised layers").reset_index()
        hist = counts.groupby("strength")["compromised layers"].value_counts(normalize=True).rename(
            "fraction of images").reset_index().sort_values("compromised layers")
        f2 = bar_plot(figs / f"histogram_{method}.png", hist, x="compromised layers", y="fraction of images",
                      hue="strength", annotate=False, title=f"{method}: number of compromised layers per image")
        r = res[res.explainer == method].assign(
            condition=lambda d: d.condition + " " + d.strength.map(lambda s: f"{s:g}×"))
        f3 = layer_shift_plot(figs / f"shift_{method}.png", r, x="layer", y="cosine", hue="condition",
                              layer_order=layer_order, title=f"{method}: cosine similarity to the clean map")
        p = prob[prob.explainer == method]
        ranking = (p.sort_values(["strength", "compromise_probability"], ascending=[True, False])
                   .groupby("strength").head(5).reset_index(drop=True))
        sections.append(Section(
            f"Compromised layers ({method})",
            f"A layer is compromised for an image when its adversarial similarity falls below the layer's "
            f"{spec['noise_rule']} noise similarity at the same strength (seed 000). Ranking: the five most "
            "often compromised layers per strength.",
            [f1, f2, f3], [ranking, p.pivot(index="layer", columns="strength", values="compromise_probability")
                           .reindex(layer_order).reset_index()],
        ))
    if imgs is not None:
        flips = imgs.groupby(["strength", "condition"]).agg(
            flip_rate=("flipped", "mean"), psnr_db=("psnr", "mean"), max_linf=("linf", "max")).reset_index()
        sections.insert(0, Section("Attack and noise", "Label flips, PSNR and L∞ size per strength.", [],
                                   [flips, tables["attack"]] if "attack" in tables else [flips]))
    if "coverage" in tables:
        cov = tables["coverage"].assign(chunk=lambda d: "chunk " + d.chunk.astype(str),
                                        iteration=lambda d: d.iteration.astype(str))
        f_cov = layer_shift_plot(figs / "coverage.png", cov.assign(curve="neuron coverage"), x="iteration",
                                 y="coverage", hue="curve", layer_order=sorted(cov.iteration.unique(), key=int),
                                 title="DLFuzz: neuron coverage per iteration (mean over chunks)",
                                 xlabel="DLFuzz iteration")
        sections.insert(1, Section("Neuron coverage", "Fraction of neurons (channels of the explained layers) "
                                   "whose min–max scaled mean activation exceeds the threshold, over the "
                                   "images of a chunk, before and after each DLFuzz iteration.", [f_cov],
                                   [tables["coverage"]]))
    grids = _grids(figs, examples, layer_order)
    if grids:
        sections.append(Section("Maps at every depth", "Clean, adversarial and noise maps (strength 1×).", grids))
    params = {k: v for k, v in spec.items() if k != "models"}
    return write_report(out / "report.html", f"advlens study: {spec['study']} (seed 000)", sections, params,
                        meta.get("versions", {}))


def _grids(figs: Path, examples: dict[str, torch.Tensor], layer_order: list[str]) -> list[Path]:
    names = list(dict.fromkeys(k.split("|")[0] for k in examples))
    picks = [layer_order[round(i * (len(layer_order) - 1) / 5)] for i in range(6)] if len(layer_order) > 6 else layer_order
    paths = []
    for name in names:
        conds = [c for c in ("clean", "adversarial", "noise") if f"{name}|{c}|image" in examples]
        rows = {c: examples[f"{name}|{c}|image"][None].float() for c in conds}
        maps = {c: {l: examples[f"{name}|{c}|{l}"][None].float() for l in picks} for c in conds}
        safe = "".join(ch if ch.isalnum() else "_" for ch in name)
        paths.append(map_grid(figs / f"grid_{safe}.png", rows, maps, picks, title=name))
    return paths
